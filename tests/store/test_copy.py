"""`ckptfs.meta.copy` on the Store API: a copy into a store shared by several machines
(each its own index, one shared backend: tests/helpers/shared.py), as into a bucket."""
from ckptfs.meta.copy import ALREADY_THERE, COPIED, copy_versions, select_versions
from ckptfs.store import Store
from tests.helpers.samples import make_checkpoint, tree_snapshot
from tests.helpers.shared import open_machine, shared_store


def test_a_copy_into_a_shared_store_is_seen_by_another_machine(tmp_path):
    sources = [make_checkpoint(tmp_path / "c" / f"v{n}", step=n) for n in (1, 2)]
    root = str(tmp_path / "bucket")
    shared_store(root)
    with Store.init(str(tmp_path / "src")) as src:
        for n, directory in enumerate(sources, 1):
            src.import_directory(directory, "p", "r", f"v{n}")
        a = open_machine(root, str(tmp_path / "a"))
        b = open_machine(root, str(tmp_path / "b"))
        try:
            versions = select_versions(src, "p/r")
            summary = copy_versions(src, a, versions)
            assert [o.state for o in summary.outcomes] == [COPIED, COPIED]
            assert 0 < summary.new_stored_bytes < summary.bytes_read
            b.committer.catch_up_if_behind()
            assert [v["digest"] for v in b.versions("p", "r")] == \
                [v["digest"] for v in versions]
            b.restore("p", "r", "v2", str(tmp_path / "out"))
            assert tree_snapshot(tmp_path / "out") == tree_snapshot(sources[1])
            again = copy_versions(src, b, versions)  # from the other machine: nothing to do
            assert [o.state for o in again.outcomes] == [ALREADY_THERE, ALREADY_THERE]
        finally:
            a.close()
            b.close()
