"""The check a project schema passes before the catalog stores it: what is not a JSON
Schema is refused. The catalog itself: tests/store/test_catalog.py."""

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
