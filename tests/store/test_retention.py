"""Retention on a real store: deletions by policy and a rebuilt index agree, and a parent
that was deleted is named so at seal. The policies and the plan as pure functions:
tests/unit/test_retention.py; the CLI: tests/cli/test_retention.py."""
from datetime import timedelta

import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import DeletionRefusedError, Store
from tests.helpers import retention as helpers
from tests.helpers.retention import NOW
from tests.helpers.samples import make_hf_checkpoint

catalog_store = helpers.catalog_store  # a fixture (tests/helpers/retention.py)
store_copy = helpers.store_copy  # a fixture (tests/helpers/retention.py)


def test_deletions_by_policy_and_rebuilt_index_agree(store_copy):
    with Store.open(store_copy) as store:
        store.set_retention_policy("nlp", None, {"keep_last": "1"})
        store.set_retention_policy("cv", None, {"keep_last": "1"})
        gone = store.apply_retention(NOW + timedelta(days=1))
        assert [d.ref for d in gone] == ["nlp/base/s4", "cv/r/c1"]   # s2 is best, s3 a parent
        with pytest.raises(DeletionRefusedError, match="already deleted"):
            store.delete_version("cv", "r", "c1", "x")
        assert store.aliases("nlp", "base") == {"latest": "s5", "best": "s2",
                                                "production": "s1"}
        assert [d["version"] for d in store.catalog_documents("nlp", "base")] == [
            "s1", "s2", "s3", "s5"]
        before = {k: v for k, v in store.index.dump().items() if k != "meta"}
        assert len(before["deleted"]) == 2
        store.rebuild_index()
        after = {k: v for k, v in store.index.dump().items() if k != "meta"}
    assert after == before


def test_a_parent_that_was_deleted_is_named_so_at_seal(store_copy, tmp_path):
    with Store.open(store_copy) as store:
        store.delete_version("cv", "r", "c1", "obsolete")
        src = make_hf_checkpoint(tmp_path / "child", 5, user={
            "lineage": {"parent": {"project": "cv", "run": "r", "version": "c1"}}})
        archive_directory(store, src, "cv", "child", "k1")
        warnings = store.catalog_document("cv", "child", "k1")["warnings"]
    assert any("lineage.parent cv/r/c1 was deleted on " in w for w in warnings)
