"""A store whose records were written with the codecs ckptfs no longer writes (BYTEGROUP,
XOR_DELTA: the format is on disk) still reads, verifies, and serves as the delta base of
new versions coded with FLOAT and FLOAT_DELTA."""
import pytest

from ckptfs.store import Store
from ckptfs.store import codec as codecs
from ckptfs.store import ingest
from tests.helpers.legacy_codec import LegacyEncoder
from tests.helpers.samples import make_checkpoint, tree_snapshot


def codecs_of(store, project, run, version, path) -> set:
    found = set()
    for chunk, _ in store.entry(project, run, version, path)["chunks"]:
        loc = store.index_location(bytes.fromhex(chunk))
        found.add(store.packs.read(loc.pack_id, loc.offset, loc.length).codec)
    return found


@pytest.fixture
def old_store(store_path, tmp_path, monkeypatch):
    """A store with two versions written as ckptfs wrote them before FLOAT."""
    with monkeypatch.context() as m:
        m.setattr(ingest, "Encoder", LegacyEncoder)
        with Store.init(store_path) as s:
            for step in (100, 200):
                s.import_directory(make_checkpoint(tmp_path / f"s{step}", step=step, scale=8),
                                   "p", "r", f"step-{step}")
            assert codecs_of(s, "p", "r", "step-200", "model.safetensors") >= \
                {codecs.BYTEGROUP, codecs.XOR_DELTA}
    return store_path


def test_versions_of_old_codecs_read_and_verify(old_store, tmp_path):
    with Store.open(old_store) as s:
        assert s.verify().ok
        for step in (100, 200):
            out = tmp_path / f"out{step}"
            s.restore("p", "r", f"step-{step}", str(out))
            assert tree_snapshot(out) == tree_snapshot(tmp_path / f"s{step}")


def test_new_versions_take_old_records_as_delta_bases(old_store, tmp_path):
    with Store.open(old_store) as s:
        src = make_checkpoint(tmp_path / "s300", step=300, scale=8)
        report = s.import_directory(src, "p", "r", "step-300")
        assert report.stats.delta_chunks > 0
        assert codecs.FLOAT_DELTA in codecs_of(s, "p", "r", "step-300", "model.safetensors")
        s.restore("p", "r", "step-300", str(tmp_path / "out"))
        assert tree_snapshot(tmp_path / "out") == tree_snapshot(src)
        assert s.verify().ok
