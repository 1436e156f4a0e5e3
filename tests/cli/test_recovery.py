"""Data loss and recovery in the store engine (issue #13): the journal's torn tail, a
damaged pack or index, healing damaged chunks (re-import, `ckptfs repair`), a wrong
chunk id key. Every test damages a real store the way a disk or a person would."""
import os
import re
import shutil

from ckptfs.store import Store
from tests.helpers.recovery import flip_payload_byte, ok, read_bytes, two_versions
from tests.helpers.samples import make_checkpoint

REF = "p/r/v1"


EXIT_DAMAGE = 3


def out(proc) -> str:
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def journal_path(store_path) -> str:
    return os.path.join(store_path, "journal", "journal.jsonl")


def write_bytes(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def pack_of_version(store_path, version: str) -> str:
    with Store.open(store_path) as s:
        packs = s.version_record("p", "r", version)
        event = next(e for e in s.journal_entries()
                     if e["type"] == "version.sealed" and e["version"] == version)
    del packs
    (pack_id,) = event["packs"]
    return os.path.join(store_path, "packs", f"{pack_id >> 8:06x}", f"{pack_id:08x}.pack")


def restored(tmp_path, store_path, ref, name, rc=0):
    dest = tmp_path / name
    proc = ok("get", store_path, ref, dest, rc=rc)
    return str(dest), proc


def same_files(a, b, rel="model.safetensors") -> bool:
    return read_bytes(os.path.join(a, rel)) == read_bytes(os.path.join(b, rel))


# -- 1. the journal's last line -------------------------------------------------------------
def test_committed_entry_that_lost_its_newline_is_restored_not_dropped(tmp_path, store_path):
    """Reproduced: the next import cut the committed last entry off as a torn append,
    and after rebuild-index p/r/v2 was gone while `audit verify` said the chain was
    intact."""
    two_versions(tmp_path, store_path)
    journal = journal_path(store_path)
    before = read_bytes(journal)
    write_bytes(journal, before[:-1])
    ok("audit", "verify", store_path, rc=None)  # may report it; must not change anything
    src3 = make_checkpoint(tmp_path / "src3", step=300, seed=3)
    ok("import", store_path, src3, "p/r/v3")
    assert read_bytes(journal).startswith(before)
    ok("rebuild-index", store_path)
    assert out(ok("ls", store_path, "p/r")).split() == ["v1", "v2", "v3"]
    assert "ok" in out(ok("audit", "verify", store_path))


def test_torn_tail_nothing_committed_is_still_dropped(tmp_path, store_path):
    """A half-written append the index never applied is a crash leftover: the next
    commit drops it and the chain stays whole."""
    two_versions(tmp_path, store_path)
    journal = journal_path(store_path)
    before = read_bytes(journal)
    write_bytes(journal, before + b'{"seq":99,"type":"version.sea')
    src3 = make_checkpoint(tmp_path / "src3", step=300, seed=3)
    ok("import", store_path, src3, "p/r/v3")
    assert b'"seq":99' not in read_bytes(journal)
    assert "ok" in out(ok("audit", "verify", store_path))
    assert out(ok("ls", store_path, "p/r")).split() == ["v1", "v2", "v3"]


def test_committed_entry_cut_short_is_refused_not_truncated(tmp_path, store_path):
    """The committed last entry lost bytes (not only its newline): nothing can prove
    what it said, so writes are refused and the journal is left as it is. Reproduced:
    the import truncated the entry and went on."""
    two_versions(tmp_path, store_path)
    journal = journal_path(store_path)
    damaged = read_bytes(journal)[:-20]
    write_bytes(journal, damaged)
    src3 = make_checkpoint(tmp_path / "src3", step=300, seed=3)
    proc = ok("import", store_path, src3, "p/r/v3", rc=1)
    message = out(proc)
    assert "entry 3" in message and "committed" in message
    assert len(message.strip().splitlines()) == 1
    assert read_bytes(journal) == damaged
    assert out(ok("ls", store_path, "p/r")).split() == ["v1", "v2"]
    assert "entry 3, the last one committed, is cut short" in \
        out(ok("audit", "verify", store_path, rc=EXIT_DAMAGE))


# -- 2. a damaged pack, a damaged index ----------------------------------------------------
def test_rebuild_index_salvages_around_a_truncated_pack(tmp_path, store_path):
    """Reproduced: ls, get and rebuild-index all failed with "manifest … is not in any
    pack" once one pack was cut short and the index removed."""
    src1, _src2 = two_versions(tmp_path, store_path)
    pack = pack_of_version(store_path, "v2")
    os.truncate(pack, os.path.getsize(pack) // 2)
    shutil.rmtree(os.path.join(store_path, "index"))
    proc = ok("rebuild-index", store_path, rc=EXIT_DAMAGE)
    assert "p/r/v2" in out(proc) and "Traceback" not in out(proc)
    listing = out(ok("ls", store_path, "p/r"))
    assert "v1" in listing and re.search(r"v2.*damaged", listing)
    dest, _ = restored(tmp_path, store_path, REF, "v1")
    assert same_files(dest, src1)
    proc = ok("get", store_path, "p/r/v2", tmp_path / "v2", rc=EXIT_DAMAGE)
    assert "p/r/v2" in out(proc) and "damaged" in out(proc)
    verify = out(ok("verify", store_path, rc=EXIT_DAMAGE))
    assert "damaged version p/r/v2" in verify and "p/r/v1" not in verify


def test_rebuild_index_names_the_damaged_file_and_keeps_the_rest(tmp_path, store_path):
    src1, _ = two_versions(tmp_path, store_path)
    flip_payload_byte(store_path, "v1", "optimizer.pt")
    shutil.rmtree(os.path.join(store_path, "index"))
    proc = ok("rebuild-index", store_path, rc=EXIT_DAMAGE)
    assert "p/r/v1/optimizer.pt" in out(proc)
    dest, proc = restored(tmp_path, store_path, REF, "v1", rc=EXIT_DAMAGE)
    assert "optimizer.pt" in out(proc)
    assert same_files(dest, src1) and not os.path.exists(os.path.join(dest, "optimizer.pt"))
    verify = out(ok("verify", store_path, rc=EXIT_DAMAGE))
    assert "damaged file p/r/v1/optimizer.pt" in verify and "p/r/v2" not in verify


def test_garbage_index_is_moved_aside_and_rebuilt(tmp_path, store_path):
    """Reproduced: every command advised rebuild-index, which failed the same way."""
    src1, _ = two_versions(tmp_path, store_path)
    data = os.path.join(store_path, "index", "data.mdb")
    write_bytes(data, os.urandom(os.path.getsize(data)))
    proc = ok("ls", store_path, "p/r", rc=1)
    assert "rebuild-index" in out(proc)
    proc = ok("rebuild-index", store_path)
    assert "moved aside" in out(proc)
    assert any(name.startswith("index.damaged-") for name in os.listdir(store_path))
    assert out(ok("ls", store_path, "p/r")).split() == ["v1", "v2"]
    dest, _ = restored(tmp_path, store_path, REF, "v1")
    assert same_files(dest, src1)


# -- 3. healing ---------------------------------------------------------------------------
def test_reimport_heals_a_chunk_a_read_found_damaged(tmp_path, store_path):
    """Reproduced: re-importing the original bytes stored nothing new (dedup pointed at
    the damaged chunk), so v1 stayed broken."""
    src1, _ = two_versions(tmp_path, store_path)
    flip_payload_byte(store_path, "v1", "model.safetensors", 1)
    restored(tmp_path, store_path, REF, "first", rc=EXIT_DAMAGE)   # the read finds it
    ok("import", store_path, src1, "p/r/v1-again")
    assert "ok" in out(ok("verify", store_path))
    dest, _ = restored(tmp_path, store_path, REF, "healed")
    assert same_files(dest, src1)


def test_reimport_after_verify_heals_and_survives_rebuild(tmp_path, store_path):
    src1, _ = two_versions(tmp_path, store_path)
    flip_payload_byte(store_path, "v1", "optimizer.pt")
    ok("verify", store_path, rc=EXIT_DAMAGE)
    ok("import", store_path, src1, "p/r/v1-again")
    ok("verify", store_path)
    ok("rebuild-index", store_path)
    ok("verify", store_path)
    dest, _ = restored(tmp_path, store_path, REF, "healed")
    assert same_files(dest, src1, "optimizer.pt")


def test_repair_dry_run_changes_nothing_then_repair_from_originals_heals(tmp_path, store_path):
    src1, _ = two_versions(tmp_path, store_path)
    flip_payload_byte(store_path, "v1", "model.safetensors", 1)
    packs_before = sorted(os.listdir(os.path.join(store_path, "packs", "000000")))
    proc = ok("repair", store_path, "--from", src1, "--dry-run", rc=EXIT_DAMAGE)
    assert "would restore 1 chunk" in out(proc)
    assert sorted(os.listdir(os.path.join(store_path, "packs", "000000"))) == packs_before
    ok("verify", store_path, rc=EXIT_DAMAGE)
    proc = ok("repair", store_path, "--from", src1)
    assert "restored 1 chunk" in out(proc)
    assert "ok" in out(ok("verify", store_path))
    dest, _ = restored(tmp_path, store_path, REF, "healed")
    assert same_files(dest, src1)
    ok("rebuild-index", store_path)
    ok("verify", store_path)


def test_repair_without_a_source_says_what_is_lost_and_reimport_heals_later(tmp_path, store_path):
    src1, _ = two_versions(tmp_path, store_path)
    flip_payload_byte(store_path, "v1", "optimizer.pt")
    assert "`ckptfs repair` to mend it" in out(ok("gc", store_path, rc=1))
    proc = ok("repair", store_path, rc=EXIT_DAMAGE)
    assert "lost" in out(proc) and "p/r/v1/optimizer.pt" in out(proc)
    ok("gc", store_path)  # the dropped record no longer stops a garbage collection
    # The damaged record was dropped: reads say it is lost, not a checksum mismatch.
    proc = ok("cat", store_path, "p/r/v1/optimizer.pt", rc=EXIT_DAMAGE)
    assert "lost" in out(proc)
    ok("import", store_path, src1, "p/r/v1-again")
    assert "ok" in out(ok("verify", store_path))


def test_repair_takes_a_chunk_from_an_export(tmp_path, store_path):
    """An export of another version that holds the same bytes is a source, too."""
    two_versions(tmp_path, store_path)
    ok("export", store_path, REF, tmp_path / "exported")
    flip_payload_byte(store_path, "v1", "optimizer.pt")
    ok("repair", store_path, "--from", tmp_path / "exported")
    ok("verify", store_path)


# -- a wrong chunk id key ------------------------------------------------------------------
def test_wrong_chunk_id_key_is_named_not_reported_as_damage(tmp_path, store_path):
    """Reproduced: verify reported every chunk of the store damaged."""
    src1, _ = two_versions(tmp_path, store_path)
    config = os.path.join(store_path, "ckptfs.toml")
    text = read_bytes(config)
    key = re.search(rb'chunk_id_key = "([0-9a-f]{64})"', text).group(1)
    write_bytes(config, text.replace(key, b"ab" * 32))
    for args in (("verify", store_path), ("import", store_path, src1, "p/r/v9"),
                 ("rebuild-index", store_path), ("repair", store_path)):
        message = out(ok(*args, rc=1))
        assert "chunk id key does not match this store" in message, args
        assert "damaged" not in message
    write_bytes(config, text)
    ok("verify", store_path)
    with Store.open(store_path) as s:
        assert s.version_record("p", "r", "v9") is None


def test_store_without_a_recorded_key_fingerprint_still_detects_a_wrong_key(tmp_path, store_path):
    """An index from before the fingerprint (or a rebuilt one) checks the key against
    the manifests instead."""
    two_versions(tmp_path, store_path)
    config = os.path.join(store_path, "ckptfs.toml")
    text = read_bytes(config)
    key = re.search(rb'chunk_id_key = "([0-9a-f]{64})"', text).group(1)
    write_bytes(config, text.replace(key, b"cd" * 32))
    shutil.rmtree(os.path.join(store_path, "index"))
    message = out(ok("ls", store_path, "p/r", rc=1))
    assert "chunk id key does not match this store" in message


def test_open_without_index_salvages_when_a_pack_is_gone(tmp_path, store_path):
    """Reproduced: with index/ removed, `ls` itself failed ("manifest … is not in any
    pack") because the open replays the journal."""
    src1, _ = two_versions(tmp_path, store_path)
    os.unlink(pack_of_version(store_path, "v2"))
    shutil.rmtree(os.path.join(store_path, "index"))
    proc = ok("ls", store_path, "p/r")
    assert proc.stdout.decode().split() == ["v1", "v2"]
    assert "p/r/v2 is damaged (its file list was lost)" in proc.stderr.decode()
    dest, _ = restored(tmp_path, store_path, REF, "v1")
    assert same_files(dest, src1)


def test_repair_heals_an_encrypted_store(tmp_path, store_path):
    src1 = make_checkpoint(tmp_path / "src1", step=100, seed=1)
    ok("init", store_path, "--encrypt", "--key-file", tmp_path / "store.key")
    ok("import", store_path, src1, REF)
    flip_payload_byte(store_path, "v1", "optimizer.pt")
    ok("verify", store_path, rc=EXIT_DAMAGE)
    assert "restored 1 chunk" in out(ok("repair", store_path, "--from", src1))
    ok("verify", store_path)
    dest, _ = restored(tmp_path, store_path, REF, "healed")
    assert same_files(dest, src1, "optimizer.pt")


def delta_and_base(store_path) -> tuple[bytes, bytes]:
    """(a chunk of p/r/v2 stored as an XOR-delta, its base: a chunk of p/r/v1)."""
    from ckptfs.store import codec
    with Store.open(store_path) as s:
        for chunk_hex, _length in s.entry("p", "r", "v2", "model.safetensors")["chunks"]:
            record = s.reader.read_record(bytes.fromhex(chunk_hex))
            base = codec.delta_base_id(record.codec, record.payload)
            if base is not None:
                return bytes.fromhex(chunk_hex), base
    raise AssertionError("p/r/v2 has no delta chunk")


def test_repair_of_a_base_heals_the_deltas_built_on_it(tmp_path, store_path):
    """Reproduced: after repair the delta chunk that had been damaged only through its
    base stayed marked, so ls still warned that p/r/v2 was damaged."""
    src1 = make_checkpoint(tmp_path / "src1", step=100, seed=1)
    src2 = make_checkpoint(tmp_path / "src2", step=200, seed=1)  # small drift: deltas
    ok("init", store_path)
    ok("import", store_path, src1, "p/r/v1")
    ok("import", store_path, src2, "p/r/v2")
    _delta, base = delta_and_base(store_path)
    with Store.open(store_path) as s:
        entry = s.entry("p", "r", "v1", "model.safetensors")
    index = [bytes.fromhex(c) for c, _ in entry["chunks"]].index(base)
    flip_payload_byte(store_path, "v1", "model.safetensors", index)
    verify = out(ok("verify", store_path, rc=EXIT_DAMAGE))
    assert "damaged version p/r/v2" in verify
    proc = ok("repair", store_path, "--from", src1)
    assert "restored 1 chunk" in out(proc) and "whole again with their base" in out(proc)
    listing = ok("ls", store_path, "p/r")
    assert listing.stderr == b"" and listing.stdout.decode().split() == ["v1", "v2"]
    ok("verify", store_path)
    dest, _ = restored(tmp_path, store_path, "p/r/v2", "v2")
    assert same_files(dest, src2)


def test_rebuild_index_warns_about_an_incomplete_journal_tail(tmp_path, store_path):
    two_versions(tmp_path, store_path)
    journal = journal_path(store_path)
    write_bytes(journal, read_bytes(journal) + b'{"seq":4,"ty')
    shutil.rmtree(os.path.join(store_path, "index"))
    proc = ok("rebuild-index", store_path)
    assert "last line is incomplete (12 bytes" in out(proc)
    assert out(ok("ls", store_path, "p/r")).split() == ["v1", "v2"]


def test_altered_last_entry_keeps_reads_working_and_refuses_writes_in_one_line(tmp_path, store_path):
    """Reproduced: every command, even `ls` and `audit verify`, died with a Python
    traceback (JSONDecodeError) once the last journal line was not JSON."""
    two_versions(tmp_path, store_path)
    journal = journal_path(store_path)
    data = read_bytes(journal)
    damaged = data[:-6] + b"XXXXX\n"
    write_bytes(journal, damaged)
    assert out(ok("ls", store_path, "p/r")).split() == ["v1", "v2"]
    assert "line 3 is not a JSON entry" in out(ok("audit", "verify", store_path, rc=EXIT_DAMAGE))
    src3 = make_checkpoint(tmp_path / "src3", step=300, seed=3)
    message = out(ok("import", store_path, src3, "p/r/v3", rc=EXIT_DAMAGE))
    assert re.search(r"journal.* not (a )?valid JSON", message), message
    assert len(message.strip().splitlines()) == 1
    assert read_bytes(journal) == damaged


def test_repair_names_a_lost_file_list_and_keeps_the_rest(tmp_path, store_path):
    src1, src2 = two_versions(tmp_path, store_path)
    pack = pack_of_version(store_path, "v2")
    os.truncate(pack, os.path.getsize(pack) // 2)
    shutil.rmtree(os.path.join(store_path, "index"))
    ok("rebuild-index", store_path, rc=EXIT_DAMAGE)
    proc = ok("repair", store_path, "--from", src2, rc=EXIT_DAMAGE)
    assert "lost: p/r/v2: its file list (manifest) was lost" in out(proc)
    assert "p/r/v1" not in out(proc)
    dest, _ = restored(tmp_path, store_path, REF, "v1")
    assert same_files(dest, src1)
