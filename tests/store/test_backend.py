"""The storage seam (store/backend.py): the contract every backend keeps, and the local
directory's layout, which must stay what older ckptfs wrote and reads.

The contract tests take a `backend` made by each factory in BACKENDS: a backend added
later (the object store) joins the list and must pass the same tests (docs/backend.md).
"""
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

from ckptfs.store import Store
from ckptfs.store.backend import (
    LocalBackend,
    ObjectExistsError,
    ObjectMissingError,
    SeqTakenError,
)
from ckptfs.store.journal import Journal
from tests.helpers.samples import make_checkpoint



def s3_backend(tmp_path, request):
    """A store's prefix in a fresh bucket of the test's moto_server (tests/helpers/s3.py)."""
    from ckptfs.store.s3 import S3Backend
    return S3Backend(request.getfixturevalue("s3_store_url"), str(tmp_path / "local"))


BACKENDS = {"local": lambda tmp_path, request: LocalBackend(str(tmp_path / "objects")),
            "s3": s3_backend}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIS_SRC = os.path.join(REPO, "src")
# The last commit before the storage seam: stores its code made must read the same.
BEFORE_SEAM = "2f73dc1889d60757f9b5035af1e245044b9efdce"


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    made = BACKENDS[request.param](tmp_path, request)
    yield made
    made.close()


# -- objects ---------------------------------------------------------------------------------------
def test_put_if_absent_refuses_a_taken_name_and_keeps_the_first(backend):
    backend.put_if_absent("packs/000000/00000001.pack", b"first")
    with pytest.raises(ObjectExistsError):
        backend.put_if_absent("packs/000000/00000001.pack", b"second")
    assert backend.get("packs/000000/00000001.pack") == b"first"
    assert [info.name for info in backend.list("")] == ["packs/000000/00000001.pack"]


def test_get_whole_and_by_range(backend):
    backend.put_if_absent("a/blob", bytes(range(100)))
    assert backend.get("a/blob") == bytes(range(100))
    assert backend.get("a/blob", 10, 5) == bytes(range(10, 15))
    assert backend.get("a/blob", 95, 10) == bytes(range(95, 100))  # short only at the end
    assert backend.get("a/blob", 100, 10) == b""
    assert backend.stat("a/blob") == 100


def test_an_absent_object_is_a_clear_error(backend):
    with pytest.raises(ObjectMissingError):
        backend.get("a/none")
    with pytest.raises(ObjectMissingError):
        backend.stat("a/none")
    reader = backend.open_reader()
    try:
        with pytest.raises(ObjectMissingError):
            reader.read("a/none", 0, 10)
    finally:
        reader.close()


def test_list_by_prefix_is_sorted_with_sizes(backend):
    for name in ("packs/000001/00000100.pack", "packs/000000/00000002.pack", "packsx", "a/b",
                 "a/bc", "a/b2/c", "ckptfs.toml"):
        backend.put_if_absent(name, name.encode())
    assert [i.name for i in backend.list("packs/")] == ["packs/000000/00000002.pack",
                                                         "packs/000001/00000100.pack"]
    assert [i.name for i in backend.list("a/b")] == ["a/b", "a/b2/c", "a/bc"]
    assert [(i.name, i.size) for i in backend.list("ckptfs")] == [("ckptfs.toml", 11)]
    assert backend.list("nothing/") == []


def test_delete_of_an_absent_object_is_a_no_op(backend):
    """Decided: like an object store's DELETE, deleting what is not there is no error;
    the answer says whether it was there."""
    backend.put_if_absent("a/blob", b"x")
    assert backend.delete("a/blob") is True
    assert backend.delete("a/blob") is False
    with pytest.raises(ObjectMissingError):
        backend.get("a/blob")
    assert backend.list("a/") == []


def test_put_replaces_whole(backend):
    backend.put("ckptfs.toml", b"old settings", secret=True)
    backend.put("ckptfs.toml", b"new", secret=True)
    assert backend.get("ckptfs.toml") == b"new"
    assert [i.name for i in backend.list("")] == ["ckptfs.toml"]  # no temporary left


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "a/../b", ".hidden", "a/.tmp"])
def test_what_is_not_an_object_name_is_refused(backend, name):
    with pytest.raises(ValueError):
        backend.put_if_absent(name, b"x")


# -- streamed writers (packs) -------------------------------------------------------------------
def test_a_writer_commits_the_whole_object(backend):
    writer = backend.open_writer("packs/000000/00000001.pack")
    for piece in (b"header", b"-record" * 1000, b"-end"):
        writer.write(piece)
    assert writer.size == 6 + 7000 + 4
    writer.commit()
    assert backend.get("packs/000000/00000001.pack") == b"header" + b"-record" * 1000 + b"-end"


def test_a_writer_never_takes_an_existing_name(backend):
    backend.put_if_absent("packs/000000/00000001.pack", b"first")
    with pytest.raises(ObjectExistsError):
        writer = backend.open_writer("packs/000000/00000001.pack")
        writer.write(b"second")
        writer.commit()
    assert backend.get("packs/000000/00000001.pack") == b"first"


def test_an_aborted_writer_leaves_nothing(backend):
    writer = backend.open_writer("packs/000000/00000001.pack")
    writer.write(b"partial")
    writer.abort()
    assert backend.list("packs/") == []
    writer.abort()  # twice: no error


def test_a_reader_reads_ranges_of_many_objects(backend):
    for n in range(3):
        backend.put_if_absent(f"packs/000000/0000000{n}.pack", bytes([n]) * 100)
    reader = backend.open_reader()
    try:
        for n in (2, 0, 1, 2):
            assert reader.read(f"packs/000000/0000000{n}.pack", 50, 10) == bytes([n]) * 10
        reader.will_need("packs/000000/00000001.pack", 0, 100)  # a hint: no answer
        backend.delete("packs/000000/00000001.pack")
        reader.forget_deleted()
    finally:
        reader.close()


# -- the journal's log -------------------------------------------------------------------------
def entry_line(seq: int, text: str) -> bytes:
    return json.dumps({"seq": seq, "text": text}, sort_keys=True).encode()


def test_journal_append_of_a_taken_seq_is_refused(backend):
    log = backend.journal()
    with log.locked():
        log.append(1, entry_line(1, "one"))
        log.append(2, entry_line(2, "two"))
        with pytest.raises(SeqTakenError):
            log.append(2, entry_line(2, "another two"))
    assert list(log.lines()) == [entry_line(1, "one"), entry_line(2, "two")]
    assert log.last() == entry_line(2, "two")


def test_two_writers_never_take_the_same_seq(backend):
    """Two logs of one backend stand for two processes that read the journal's end before
    either appended: the slower one is refused, and after catching up takes the next seq."""
    first, second = backend.journal(), backend.journal()
    assert first.last() is None and second.last() is None  # both saw an empty journal
    with first.locked():
        first.append(1, entry_line(1, "first"))
    with second.locked():
        with pytest.raises(SeqTakenError):
            second.append(1, entry_line(1, "second"))
        second.append(2, entry_line(2, "second"))
    assert list(first.lines()) == [entry_line(1, "first"), entry_line(2, "second")]


def test_journal_remove_last_and_raw(backend):
    log = backend.journal()
    with log.locked():
        log.append(1, entry_line(1, "one"))
        log.append(2, entry_line(2, "two"))
        log.remove_last(2)
    assert log.raw() == entry_line(1, "one") + b"\n"
    assert log.torn_tail() is None


def test_journal_chain_over_a_backend(backend):
    journal = Journal(backend.journal())
    with journal.locked():
        journal.append({"type": "x", "n": 1})
        second = journal.append({"type": "x", "n": 2})
    assert [e["n"] for e in journal.entries()] == [1, 2]
    assert journal.last_seq() == 2 and second["seq"] == 2
    assert journal.check_chain((2, None))["ok"]


# -- the local layout ---------------------------------------------------------------------------
def test_local_files_are_where_the_store_format_puts_them(tmp_path):
    backend = LocalBackend(str(tmp_path))
    os.chmod(tmp_path, 0o700)
    backend.put_if_absent("packs/000001/00000100.pack", b"p")
    backend.put("ckptfs.toml", b"s", secret=True)
    writer = backend.open_writer("packs/000000/00000001.pack")
    writer.commit()
    with backend.journal().locked():
        backend.journal().append(1, entry_line(1, "one"))
    files = {os.path.relpath(os.path.join(d, f), tmp_path): stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode)
             for d, _dirs, names in os.walk(tmp_path) for f in names}
    assert files == {"packs/000001/00000100.pack": 0o600, "packs/000000/00000001.pack": 0o600,
                     "ckptfs.toml": 0o600, "journal/journal.jsonl": 0o600, "journal/lock": 0o600}


def run_with(src: str, script: str, *args: str) -> str:
    """Run `script` with ckptfs from `src` (a checkout's src/); returns its stdout."""
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


INIT = "import sys\nfrom ckptfs.store import Store\nStore.init(sys.argv[1]).close()\n"
IMPORT = """import sys
from ckptfs.store import Store
with Store.open(sys.argv[1]) as s:
    for n, src in enumerate(sys.argv[2:], 1):
        s.import_directory(src, "p", "r", f"v{n}")
    s.set_alias("p", "r", "production", "v1")
"""
STATS = """import json, sys
from ckptfs.store import Store
with Store.open(sys.argv[1]) as s:
    stats = s.stats()
    print(json.dumps({"stats": stats, "journal": s.check_journal(), "verify": s.verify().ok,
                      "versions": [v["version"] for v in s.all_versions()]}, sort_keys=True))
"""


# What the codec changes (issue 16: packs hold the new codecs' records, so a version's
# stored bytes and the manifest that counts them differ from the old code's).
CODEC_DEPENDENT = ("manifest", "new_stored_bytes")


def layout(store: str, codec_dependent: bool = True) -> dict:
    """{path: (mode, bytes)} of a store: packs and settings byte for byte; journal lines
    without what differs between two runs (time, pid and so the chain's hashes); the
    index (a derived cache) only by name. Without `codec_dependent`: packs only by name
    and mode, journal lines without the fields that count stored bytes."""
    ignored = ("time", "pid", "prev") + (() if codec_dependent else CODEC_DEPENDENT)
    found = {}
    for dirpath, dirnames, names in os.walk(store):
        for name in dirnames + names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, store)
            mode = stat.S_IMODE(os.lstat(full).st_mode)
            if rel.startswith("index" + os.sep) or os.path.isdir(full) or \
                    (not codec_dependent and rel.startswith("packs" + os.sep)):
                found[rel] = (mode, None)
            elif rel == os.path.join("journal", "journal.jsonl"):
                with open(full, "rb") as f:
                    lines = [json.loads(line) for line in f.read().splitlines()]
                found[rel] = (mode, [{k: v for k, v in e.items() if k not in ignored}
                                     for e in lines])
            else:
                with open(full, "rb") as f:
                    found[rel] = (mode, f.read())
    return found


@pytest.fixture(scope="module")
def old_src(tmp_path_factory) -> str:
    """`src/` of the commit before the seam (skipped where the history is not at hand)."""
    dest = tmp_path_factory.mktemp("before-seam")
    archive = subprocess.run(["git", "-C", REPO, "archive", BEFORE_SEAM, "src"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.skip(f"commit {BEFORE_SEAM[:7]} is not in this checkout's history")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return str(dest / "src")


@pytest.fixture
def sources(tmp_path):
    return [make_checkpoint(tmp_path / "src" / f"step-{n}", step=n) for n in (100, 200)]


def test_a_store_made_before_the_seam_reads_the_same(tmp_path, sources, old_src):
    """Made and filled by the code before the seam, read by this code: the same versions,
    files, statistics, journal and verify verdict as the old code gives."""
    old = str(tmp_path / "old")
    run_with(old_src, INIT, old)
    run_with(old_src, IMPORT, old, *sources)
    before = json.loads(run_with(old_src, STATS, old))
    assert json.loads(run_with(THIS_SRC, STATS, old)) == before
    with Store.open(old) as s:
        for n, src in enumerate(sources, 1):
            dest = str(tmp_path / f"restored-{n}")
            s.restore("p", "r", f"v{n}", dest)
            for dirpath, _dirs, names in os.walk(src):
                for name in names:
                    path = os.path.join(dirpath, name)
                    if os.path.islink(path):
                        continue
                    copy = os.path.join(dest, os.path.relpath(path, src))
                    assert digest(copy) == digest(path), path
    assert before["verify"] and before["journal"]["ok"]


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_new_store_is_laid_out_as_before(tmp_path, sources, old_src):
    """One store made by the old code, copied: the old code fills one copy and this code
    the other, with the same versions. Settings are byte for byte the same, and so is
    every file's name and mode; journal entries differ only in time and pid and in what
    the codecs changed since (issue 16: the packs' records and so the stored bytes)."""
    old = str(tmp_path / "old")
    run_with(old_src, INIT, old)
    new = str(tmp_path / "new")
    subprocess.run(["cp", "-a", old, new], check=True)
    run_with(old_src, IMPORT, old, *sources)
    run_with(THIS_SRC, IMPORT, new, *sources)
    assert layout(new, codec_dependent=False) == layout(old, codec_dependent=False)


def test_init_writes_the_settings_as_before(tmp_path, old_src):
    """`ckptfs.toml` of a new store: the same text as the old code writes but for the
    chunk id key and the time, mode 0600; the same directories with the same modes."""
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    run_with(old_src, INIT, old)
    run_with(THIS_SRC, INIT, new)

    def settings(store):
        with open(os.path.join(store, "ckptfs.toml")) as f:
            return [line for line in f.read().splitlines()
                    if not line.startswith(("chunk_id_key", "created"))]
    assert settings(new) == settings(old)
    modes = {store: {k: v[0] for k, v in layout(store).items() if not k.startswith("index" + os.sep)}
             for store in (old, new)}
    assert modes[new] == modes[old]
