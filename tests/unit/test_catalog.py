"""The catalog at store level (no mount): aliases, project settings and schemas, what
survives an index rebuild, a journal replay and an index upgrade, and the rules that
keep aliases apart from versions. Real packs, real LMDB, real journal."""

import pytest

from ckptfs.meta.schema import SchemaInvalidError, check_schema


def test_check_schema_refuses_what_is_not_a_json_schema():
    check_schema({"type": "object"})
    check_schema(True)
    with pytest.raises(SchemaInvalidError, match="not a valid JSON Schema: at type: 12"):
        check_schema({"type": 12})
    with pytest.raises(SchemaInvalidError, match="must be a JSON object"):
        check_schema(["type"])
    with pytest.raises(SchemaInvalidError, match="at properties.a"):
        check_schema({"properties": {"a": {"minimum": "zero"}}})
