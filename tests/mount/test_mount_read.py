"""The read-only tree of a real mount, driven by real tools."""
import errno
import hashlib
import json
import os
import stat
import subprocess

import numpy as np
import pytest
from tests.helpers.samples import make_checkpoint, tree_snapshot

from ckptfs.store import Store
from ckptfs.store.backend import LocalBackend
from ckptfs.store.pack import pack_name

WRITE_BITS = 0o222


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)


@pytest.fixture
def archive(tmp_path):
    """A store with two versions of one run and one of another project."""
    store = str(tmp_path / "store")
    src1 = make_checkpoint(tmp_path / "src" / "step-100", step=100, scale=8)
    src2 = make_checkpoint(tmp_path / "src" / "step-200", step=200, scale=8)
    with Store.init(store) as s:
        s.import_directory(src1, "bert", "run-1", "step-100")
        s.import_directory(src2, "bert", "run-1", "step-200")
        s.import_directory(src1, "gpt", "base", "v1")
    return store, src1, src2


@pytest.fixture
def mounted(archive, mount):
    store, src1, src2 = archive
    mnt = mount(store)
    return mnt, os.path.join(mnt, "projects", "bert", "run-1"), src1, src2


def test_layout_lists_projects_runs_versions_sidecars_and_latest(mounted):
    mnt, run, _, _ = mounted
    assert sorted(os.listdir(mnt)) == [".ckptfs", "inbox", "projects"]
    assert os.listdir(os.path.join(mnt, "projects")) == ["bert", "gpt"]
    assert sorted(os.listdir(run)) == ["latest", "run.json", "step-100", "step-100.json",
                                       "step-200", "step-200.json"]
    assert os.readlink(os.path.join(run, "latest")) == "step-200"
    assert os.path.realpath(os.path.join(run, "latest")) == os.path.join(run, "step-200")


def test_files_keep_bytes_sizes_modes_without_write_bits_and_mtimes(mounted):
    _, run, _, src2 = mounted
    version = os.path.join(run, "step-200")
    expected = tree_snapshot(src2)
    got = tree_snapshot(version)
    assert got.keys() == expected.keys()
    for path, info in expected.items():
        if info[0] == "symlink":
            assert got[path] == info
        elif info[0] == "file":
            kind, mode, mtime, data = info
            assert got[path] == (kind, mode & ~WRITE_BITS, mtime, data), path
        else:
            assert got[path][1] == info[1] & ~WRITE_BITS and got[path][2] == info[2], path


def test_sha256sum_diff_and_getfattr_agree_with_the_source(mounted):
    _, run, _, src2 = mounted
    version = os.path.join(run, "step-200")
    sums = sh("sha256sum model.safetensors optimizer.pt config.json tokenizer/vocab.txt EMPTY",
              cwd=src2)
    assert sums.returncode == 0
    check = sh("sha256sum -c -", cwd=version, input=sums.stdout)
    assert check.returncode == 0 and check.stdout.count(": OK") == 5, check.stdout + check.stderr
    assert sh(f"diff -r --no-dereference {src2} {version}").returncode == 0
    attr = sh(f"getfattr --only-values -n user.ckptfs.sha256 {version}/model.safetensors")
    with open(os.path.join(src2, "model.safetensors"), "rb") as f:
        assert attr.stdout == hashlib.sha256(f.read()).hexdigest()
    assert "user.ckptfs.sha256" in sh(f"getfattr -d {version}/config.json").stdout


def test_labels_and_acls_are_not_supported_and_other_user_attributes_are_absent(mounted):
    """ENOTSUP for security.* and system.* lets `ls -l` stop asking (it caches that per
    file system); a user.* name we do not have is simply absent (ENODATA)."""
    _, run, _, _ = mounted
    path = os.path.join(run, "step-200", "config.json")
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        with pytest.raises(OSError) as refused:
            os.getxattr(path, name)
        assert refused.value.errno == errno.ENOTSUP, name
    with pytest.raises(OSError) as absent:
        os.getxattr(path, "user.other")
    assert absent.value.errno == errno.ENODATA
    assert len(os.getxattr(path, "user.ckptfs.sha256")) == 64
    listing = sh(f"ls -l {run}/step-200")
    assert listing.returncode == 0 and "config.json" in listing.stdout, listing.stderr


def test_find_grep_du_ls_lR_work_over_the_tree(mounted):
    mnt, run, _, _ = mounted
    found = sh(f"find {mnt}/projects -name '*.safetensors' -type f | sort").stdout.split()
    assert [os.path.relpath(p, mnt) for p in found] == [
        "projects/bert/run-1/step-100/model.safetensors",
        "projects/bert/run-1/step-200/model.safetensors",
        "projects/gpt/base/v1/model.safetensors"]
    grep = sh(f"grep -rl global_step {mnt}/projects --include=trainer_state.json")
    assert len(grep.stdout.split()) == 3
    assert sh(f"grep -l '\"digest\"' {run}/*.json").stdout.count(".json") == 2
    listing = sh(f"ls -lR {mnt}/projects")
    assert listing.returncode == 0 and "vocab.txt" in listing.stdout and "-> step-200" in listing.stdout
    du = sh(f"du -sb {run}/step-200")
    src_size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(run + "/step-200")
                   for f in fs if not os.path.islink(os.path.join(d, f)))
    assert du.returncode == 0 and int(du.stdout.split()[0]) >= src_size


def test_tar_and_rsync_copy_a_version_out_exactly(mounted, tmp_path):
    _, run, _, src2 = mounted
    assert sh(f"tar -C {run} -cf {tmp_path}/v.tar step-200").returncode == 0
    (tmp_path / "untar").mkdir()
    assert sh(f"tar -C {tmp_path}/untar -xf {tmp_path}/v.tar").returncode == 0
    rs = sh(f"rsync -a {run}/step-200/ {tmp_path}/rsynced/")
    assert rs.returncode == 0, rs.stderr
    def files_and_links(tree):  # contents, link targets and file mtimes to the second
        return {k: (v[-1], v[2] // 10**9) if v[0] == "file" else v for k, v in tree.items()
                if v[0] != "dir"}
    for copy in (tmp_path / "untar" / "step-200", tmp_path / "rsynced"):
        assert files_and_links(tree_snapshot(copy)) == files_and_links(tree_snapshot(src2))


def test_mmap_loads_safetensors_equal_to_the_source(mounted):
    from safetensors import safe_open
    _, run, _, src2 = mounted
    mounted_file = safe_open(os.path.join(run, "step-200", "model.safetensors"), "np")
    source_file = safe_open(os.path.join(src2, "model.safetensors"), "np")
    assert sorted(mounted_file.keys()) == sorted(source_file.keys())
    for name in source_file.keys():
        assert np.array_equal(mounted_file.get_tensor(name), source_file.get_tensor(name))
    import mmap
    with open(os.path.join(run, "step-200", "optimizer.pt"), "rb") as f:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            with open(os.path.join(src2, "optimizer.pt"), "rb") as g:
                assert m[:] == g.read()


@pytest.mark.parametrize("command", [
    "touch {v}/new-file", "rm -f {v}/config.json", "mkdir {v}/d", "mv {v}/config.json {v}/c",
    "chmod 777 {v}/config.json", "truncate -s 0 {v}/config.json", "ln {v}/config.json {v}/hard",
    "ln -s x {v}/soft", "setfattr -n user.x -v 1 {v}/config.json", "rmdir {v}/tokenizer",
    "sh -c 'echo x >> {v}/config.json'", "touch {run}/step-300", "mkdir {mnt}/projects/new",
    "chown nobody {v}/config.json", "rm -f {run}/step-100.json",
])
def test_every_change_under_projects_is_refused_as_read_only(mounted, command):
    mnt, run, _, src2 = mounted
    v = os.path.join(run, "step-200")
    before = tree_snapshot(v)
    proc = sh(command.format(v=v, run=run, mnt=mnt))
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr, proc.stderr
    assert tree_snapshot(v) == before


def test_sidecar_names_files_hashes_and_digest(mounted, archive):
    _, run, _, src2 = mounted
    with open(os.path.join(run, "step-200.json")) as f:
        sidecar = json.load(f)
    store_path = archive[0]
    with Store.open(store_path) as s:
        record = s.version_record("bert", "run-1", "step-200")
    assert sidecar["schema"] == "ckptfs.version/1"
    assert (sidecar["project"], sidecar["run"], sidecar["version"]) == ("bert", "run-1", "step-200")
    assert sidecar["digest"] == record["digest"] and sidecar["sealed_at"] == record["sealed_at"]
    files = {f["path"]: f for f in sidecar["files"]}
    with open(os.path.join(src2, "optimizer.pt"), "rb") as f:
        assert files["optimizer.pt"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert files["EMPTY"]["size"] == 0 and "tokenizer/vocab.txt" in files
    assert sidecar["storage"]["logical_bytes"] == sum(f["size"] for f in files.values())


def test_stat_fields_nlink_blocks_and_statfs(mounted, archive):
    mnt, run, _, _ = mounted
    st = os.stat(os.path.join(run, "step-200", "optimizer.pt"))
    assert st.st_nlink == 1 and st.st_blocks == (st.st_size + 511) // 512
    assert os.stat(os.path.join(run, "step-200")).st_nlink == 3  # ".", "..", tokenizer/
    assert stat.S_ISLNK(os.lstat(os.path.join(run, "latest")).st_mode)
    assert os.statvfs(mnt).f_blocks == os.statvfs(archive[0]).f_blocks


def test_a_damaged_chunk_gives_eio_and_a_log_line_never_wrong_bytes(archive, mount):
    store, _, src2 = archive
    with Store.open(store) as s:
        entry = s.entry("bert", "run-1", "step-200", "optimizer.pt")
        loc = s.index_location(bytes.fromhex(entry["chunks"][0][0]))
    with open(LocalBackend(store).path_of(pack_name(loc.pack_id)), "r+b") as f:
        f.seek(loc.offset + loc.length - 10)
        byte = f.read(1)
        f.seek(loc.offset + loc.length - 10)
        f.write(bytes([byte[0] ^ 0x55]))
    mnt = mount(store)
    version = os.path.join(mnt, "projects", "bert", "run-1", "step-200")
    proc = subprocess.run(["cat", os.path.join(version, "optimizer.pt")], capture_output=True)
    assert proc.returncode != 0 and b"Input/output error" in proc.stderr
    with open(os.path.join(src2, "optimizer.pt"), "rb") as f:
        assert f.read().startswith(proc.stdout)
    with open(os.path.join(version, "config.json"), "rb") as f, \
         open(os.path.join(src2, "config.json"), "rb") as g:
        assert f.read() == g.read()
    with open(os.path.join(store, "logs", "mount.log")) as f:
        log = f.read()
    assert f"pack {loc.pack_id:08x}" in log and "optimizer.pt" in log


def test_a_large_run_lists_completely_in_a_stable_order(tmp_path, mount):
    store = str(tmp_path / "store")
    src = tmp_path / "tiny"
    src.mkdir()
    (src / "f").write_text("x")
    names = [f"step-{i:05d}" for i in range(600)]
    with Store.init(store) as s:
        for name in names:
            s.import_directory(str(src), "p", "big", name)
    mnt = mount(store)
    run = os.path.join(mnt, "projects", "p", "big")
    first = os.listdir(run)
    assert first == os.listdir(run)
    assert sorted(n for n in first if not n.endswith(".json") and n != "latest") == names
    assert len(first) == 2 * len(names) + 2  # and run.json, latest
    assert sh(f"ls {run} | wc -l").stdout.strip() == str(2 * len(names) + 2)


def test_umount_command_and_errors(archive, mount, tmp_path, cli):
    store = archive[0]
    mnt = mount(store)
    again = cli("mount", store, mnt)
    assert again.returncode == 1 and b"already a mount point" in again.stderr
    nowhere = cli("mount", store, tmp_path / "missing")
    assert nowhere.returncode == 1 and b"not a directory" in nowhere.stderr
    notstore = cli("mount", tmp_path, mnt)
    assert notstore.returncode == 1 and b"not a ckptfs store" in notstore.stderr
    assert cli("umount", mnt).returncode == 0
    assert not os.path.ismount(mnt)
    assert cli("umount", mnt).returncode == 1
