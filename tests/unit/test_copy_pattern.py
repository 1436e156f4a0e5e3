"""The PATTERN of `ckptfs copy`: globs over PROJECT/RUN/VERSION (ckptfs.meta.copy)."""
import pytest

from ckptfs.meta.copy import CopyError, parse_pattern
from ckptfs.store import StoreError


def test_a_pattern_has_one_to_three_parts():
    assert parse_pattern("nlp") == ("nlp",)
    assert parse_pattern("nlp/*") == ("nlp", "*")
    assert parse_pattern("nlp/run-1/step-*") == ("nlp", "run-1", "step-*")


@pytest.mark.parametrize("pattern", ["", "/", "nlp/", "/nlp", "a//b", "a/b/c/d"])
def test_empty_parts_and_too_many_parts_are_refused(pattern):
    with pytest.raises(CopyError, match="bad pattern"):
        parse_pattern(pattern)


def test_a_part_without_glob_characters_follows_the_name_rule():
    with pytest.raises(StoreError, match="project"):
        parse_pattern("-x/run")
    assert parse_pattern("-x*/run") == ("-x*", "run")  # a glob is not a name
