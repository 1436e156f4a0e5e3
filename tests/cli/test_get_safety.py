"""`ckptfs get` writes only inside DEST, only whole files, and keeps holes: real stores,
the real `ckptfs` command, real symlinks, a real (tiny) tmpfs that fills up."""
import hashlib
import os
import subprocess

import pytest

from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint, tree_snapshot


def ck(*args, rc=0):
    return run_cli_checked(*args, rc=rc)


def err(proc) -> str:
    return proc.stderr.decode(errors="replace")


def sha256_file(path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def partial_files(root) -> list[str]:
    return [os.path.join(d, n) for d, _dirs, names in os.walk(root) for n in names
            if n.endswith(".ckptfs-partial")]


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """A store with p/r/v (make_checkpoint: tokenizer/vocab.txt, a symlink, …)."""
    root = tmp_path_factory.mktemp("get-safety")
    store = str(root / "store")
    src = make_checkpoint(root / "src" / "v", step=100)
    ck("init", store)
    ck("import", store, src, "p/r/v")
    return store, src


@pytest.fixture
def elsewhere(tmp_path):
    """A directory outside DEST that get must never write into."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    (path / "victim").write_text("not yours")
    return path


def test_get_refuses_a_non_empty_dest_and_writes_nothing(versions, tmp_path):
    store, _src = versions
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    proc = ck("get", store, "p/r/v", dest, rc=1)
    assert f"{dest} is not empty" in err(proc) and "--force" in err(proc)
    assert len(err(proc).strip().splitlines()) == 1
    assert os.listdir(dest) == ["notes.txt"]


def test_get_never_follows_a_directory_symlink_in_dest(versions, tmp_path, elsewhere):
    store, src = versions
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(elsewhere, dest / "tokenizer")  # the version has tokenizer/vocab.txt
    proc = ck("get", store, "p/r/v", dest, rc=1)
    assert "already exists" in err(proc)
    ck("get", "--force", store, "p/r/v", dest)
    assert sorted(os.listdir(elsewhere)) == ["victim"], "get wrote through a symlink"
    assert (elsewhere / "victim").read_text() == "not yours"
    assert not os.path.islink(dest / "tokenizer")
    assert tree_snapshot(dest) == tree_snapshot(src)


def test_get_force_replaces_files_and_links_without_writing_through_them(
        versions, tmp_path, elsewhere):
    store, src = versions
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(elsewhere / "victim", dest / "config.json")
    (dest / "optimizer.pt").write_bytes(b"an old optimizer state")
    (dest / "notes.txt").write_text("mine")
    ck("get", "--force", store, "p/r/v", dest)
    assert (elsewhere / "victim").read_text() == "not yours", "get wrote through a symlink"
    assert not os.path.islink(dest / "config.json")
    want = tree_snapshot(src)
    got = tree_snapshot(dest)
    assert got.pop("notes.txt")[3] == b"mine", "--force removed a file not in the version"
    assert got == want
    assert partial_files(dest) == []


def test_get_force_stops_at_a_directory_in_a_files_place(versions, tmp_path):
    store, _src = versions
    dest = tmp_path / "dest"
    (dest / "config.json").mkdir(parents=True)
    (dest / "config.json" / "keep").write_text("mine")
    proc = ck("get", "--force", store, "p/r/v", dest, rc=1)
    assert "config.json" in err(proc) and "directory is in the way" in err(proc)
    assert len(err(proc).strip().splitlines()) == 1
    assert (dest / "config.json" / "keep").read_text() == "mine"
    assert partial_files(dest) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs."""
    path = tmp_path / "small"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", path],
                      capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield path
    subprocess.run(["umount", path], check=True)


def test_get_on_a_full_disk_leaves_no_partial_file_under_a_real_name(tmp_path, small_disk):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small.json").write_text('{"ok": true}')
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # more than the disk holds
    store = str(tmp_path / "store")
    ck("init", store)
    ck("import", store, src, "p/r/v")
    dest = small_disk / "dest"
    proc = ck("get", store, "p/r/v", dest, rc=1)
    message = err(proc)
    assert len(message.strip().splitlines()) == 1, message
    assert f"cannot write {dest / 'big.bin'}: no space left on device" in message
    assert "Traceback" not in message
    assert sorted(os.listdir(dest)) == ["a-small.json"], "a truncated big.bin was left"
    assert (dest / "a-small.json").read_text() == '{"ok": true}'
    assert partial_files(small_disk) == []


def test_get_keeps_a_sparse_file_sparse(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    size = 64 << 20
    with open(src / "sparse.bin", "wb") as f:
        f.write(os.urandom(10_000))        # data, ending inside a block
        f.seek(20 << 20)
        f.write(os.urandom(5000))          # data in the middle, not block-aligned
        f.truncate(size)                   # a hole up to the end
    with open(src / "dense.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
    store = str(tmp_path / "store")
    ck("init", store)
    ck("import", store, src, "p/r/v")
    dest = tmp_path / "dest"
    ck("get", store, "p/r/v", dest)
    for name in ("sparse.bin", "dense.bin"):
        assert sha256_file(dest / name) == sha256_file(src / name), name
    st = os.stat(dest / "sparse.bin")
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20, f"{st.st_blocks * 512} bytes allocated for a sparse file"
    assert os.stat(dest / "dense.bin").st_blocks * 512 >= 1 << 20
