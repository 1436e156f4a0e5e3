"""The engine on a shared backend: many machines, each with its own index, write one
store; the journal's conditional append decides between them (docs/backend.md)."""
import os

import pytest

from ckptfs.store import VersionExistsError
from ckptfs.store.pack import pack_index_name, pack_name
from tests.helpers.samples import make_checkpoint
from tests.helpers.shared import SharedDirectory, open_machine, shared_store


@pytest.fixture
def machines(tmp_path):
    root = str(tmp_path / "bucket")
    shared_store(root)
    opened = [open_machine(root, str(tmp_path / name)) for name in ("a", "b", "c")]
    yield opened
    for machine in opened:
        machine.close()


def version_names(store, project="p", run="r"):
    return [v["version"] for v in store.versions(project, run)]


def test_a_version_sealed_on_one_machine_is_read_on_another(machines, tmp_path):
    a, b, _c = machines
    src = make_checkpoint(tmp_path / "src" / "v1", step=1)
    a.import_directory(src, "p", "r", "v1")
    b.committer.catch_up_if_behind()
    assert version_names(b) == ["v1"]
    b.restore("p", "r", "v1", str(tmp_path / "out"))
    for name in ("model.safetensors", "optimizer.pt"):
        with open(os.path.join(src, name), "rb") as original:
            assert (tmp_path / "out" / name).read_bytes() == original.read()


def test_each_pack_has_an_index_object_and_a_catch_up_reads_no_pack(machines, tmp_path):
    a, b, _c = machines
    a.import_directory(make_checkpoint(tmp_path / "src" / "v1", step=1), "p", "r", "v1")
    names = [info.name for info in a.backend.list("packs/")]
    packs = [n for n in names if n.endswith(".pack")]
    assert packs and all(n[:-5] + ".idx" in names for n in packs)

    read = []

    class Counting(SharedDirectory):
        def get(self, name, offset=0, length=None):
            read.append(name)
            return super().get(name, offset, length)
    b.backend.__class__ = Counting  # count what b's catch-up asks the shared store for
    b.committer.catch_up_if_behind()
    assert version_names(b) == ["v1"]
    assert [n for n in read if n.endswith(".idx")]
    assert not [n for n in read if n.endswith(".pack")], f"catch-up downloaded packs: {read}"


def test_pack_ids_are_random_not_counted(machines, tmp_path):
    a, b, _c = machines
    ids = {a.allocate_pack_id() for _ in range(50)} | {b.allocate_pack_id() for _ in range(50)}
    assert len(ids) == 100 and max(ids) > 1 << 20
    assert pack_name(0x12345678) == "packs/123456/12345678.pack"
    assert pack_index_name(0x12345678) == "packs/123456/12345678.idx"


def test_two_machines_sealing_one_name_exactly_one_wins(machines, tmp_path):
    a, b, _c = machines
    src_a = make_checkpoint(tmp_path / "src" / "a", step=1)
    src_b = make_checkpoint(tmp_path / "src" / "b", step=2)
    # Both prepared before either commits: b's index does not know a's version yet.
    ingest_b = b.begin_ingest("p", "r", "v1")
    a.import_directory(src_a, "p", "r", "v1")
    with pytest.raises(VersionExistsError):
        b.import_directory(src_b, "p", "r", "v1", ingest=ingest_b)
    b.committer.catch_up_if_behind()
    assert version_names(b) == ["v1"]
    assert b.versions("p", "r")[0]["digest"] == a.versions("p", "r")[0]["digest"]


def test_machines_committing_in_turn_keep_one_chain(machines, tmp_path):
    """No machine catches up before it commits: each commit loses the seq it wanted to
    the others' and retries on top of them."""
    for n in range(9):
        machine = machines[n % 3]
        src = make_checkpoint(tmp_path / "src" / f"v{n}", step=n + 1)
        machine.import_directory(src, "p", f"run-{n % 3}", f"v{n}")
    for machine in machines:
        machine.committer.catch_up_if_behind()
        assert machine.check_journal()["ok"]
        assert sum(len(machine.versions("p", f"run-{k}")) for k in range(3)) == 9
    seqs = [e["seq"] for e in machines[0].journal_entries()]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all("nonce" not in e for e in machines[0].journal_entries())  # a directory's log


def test_a_fresh_index_built_from_the_store_answers_like_the_original(machines, tmp_path):
    a, _b, _c = machines
    for n in range(3):
        a.import_directory(make_checkpoint(tmp_path / "src" / f"v{n}", step=n + 1), "p", "r", f"v{n}")
    a.set_alias("p", "r", "production", "v1")
    fresh = open_machine(a.backend.root, str(tmp_path / "fresh"))
    try:
        assert fresh.versions("p", "r") == a.versions("p", "r")
        assert fresh.aliases("p", "r") == a.aliases("p", "r")
        fresh.restore("p", "r", "v2", str(tmp_path / "out"))
        assert os.listdir(tmp_path / "out")
    finally:
        fresh.close()


def test_a_rebuilt_index_ignores_packs_no_journal_entry_names(machines, tmp_path):
    """Another machine's ingest under way has written a pack with copies of records a
    sealed version has elsewhere: a rebuild indexes only the journaled places."""
    a, _b, c = machines
    src = make_checkpoint(tmp_path / "src" / "v1", step=1)
    c_ingest = c.begin_ingest("p", "r", "v-later")  # c has not seen v1: it dedups nothing
    a.import_directory(src, "p", "r", "v1")
    c.pack_sinks.allocate_pack_id = lambda: 1  # sorts before a's random pack ids
    c_sink = c_ingest.sink
    c_sink.allocate_pack_id = c.pack_sinks.allocate_pack_id
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isfile(path) and not os.path.islink(path):
            assert c_ingest.prepare_file(name, path, token=name)
    c_sink.close()  # the copies are in a complete pack that no entry names
    assert 1 in {int(info.name.rsplit("/", 1)[1][:8], 16) for info in a.backend.list("packs/")
                 if info.name.endswith(".pack")}
    with a.index.read() as txn:
        before = dict(a.index.iter_locations(txn, a.index.chunks))
    a.rebuild_index()
    with a.index.read() as txn:
        after = dict(a.index.iter_locations(txn, a.index.chunks))
        assert 1 not in a.index.referenced_pack_ids(txn)
    assert after == before
    c_ingest.abort()
