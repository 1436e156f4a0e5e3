"""ckptfs.meta.provenance on real child processes and hand-made git repositories."""
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys

import numpy
import pytest

from ckptfs.meta.provenance import (
    cuda_version, describe_process, describe_this_process, git_info, lineage_from_provenance,
    mapped_package_versions, python_version, strip_url_credentials)

SHA_MAIN = "3f786850e387550fdab836ed7e6dc881de23001b"
SHA_PACKED = "89e6c98d92887913cadf06b2adb97f26cde4849b"
SHA_FEATURE = "2b66fd261ee5c6cfc8de7fa466bab600bcfe4f69"
ORIGIN = "git@example.com:team/bert-finetune.git"

# Prints the native id of a second thread, then waits until stdin is closed.
CHILD_SCRIPT = """
import sys, threading
if "numpy" in sys.argv:
    import numpy
started, done, ids = threading.Event(), threading.Event(), []
def worker():
    ids.append(threading.get_native_id())
    started.set()
    done.wait()
thread = threading.Thread(target=worker)
thread.start()
started.wait()
print(ids[0], flush=True)
sys.stdin.read()
done.set()
"""


@contextlib.contextmanager
def running_child(cwd, env=None, *args):
    """A Python child process in cwd; yields (Popen, native id of its second thread)."""
    env = {"PATH": os.environ["PATH"]} if env is None else env
    proc = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, *args], cwd=cwd, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        thread_id = int(proc.stdout.readline())
        yield proc, thread_id
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def make_git_repo(root, head="ref: refs/heads/main\n", loose_refs=None, packed_refs=None,
                  origin=ORIGIN):
    """A repository written by hand, the way git lays it out on disk."""
    git_dir = os.path.join(root, ".git")
    write(os.path.join(git_dir, "HEAD"), head)
    for ref, sha in (loose_refs or {}).items():
        write(os.path.join(git_dir, ref), sha + "\n")
    if packed_refs:
        lines = ["# pack-refs with: peeled fully-peeled sorted"]
        for ref, sha in packed_refs.items():
            lines += [f"{sha} {ref}", "^" + "0" * 40]
        write(os.path.join(git_dir, "packed-refs"), "\n".join(lines) + "\n")
    config = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n"
    if origin:
        config += ('[remote "upstream"]\n\turl = https://example.com/other.git\n'
                   f'[remote "origin"]\n\turl = {origin}\n'
                   "\tfetch = +refs/heads/*:refs/remotes/origin/*\n")
    write(os.path.join(git_dir, "config"), config)
    return str(root)


@pytest.fixture
def repo(tmp_path):
    root = make_git_repo(tmp_path / "repo", loose_refs={"refs/heads/main": SHA_MAIN})
    os.makedirs(os.path.join(root, "train", "scripts"))
    return os.path.realpath(root)


def test_child_process_description(repo):
    cwd = os.path.join(repo, "train", "scripts")
    with running_child(cwd) as (proc, _thread_id):
        prov = describe_process(proc.pid)
    assert prov["pid"] == proc.pid
    assert prov["executable"] == os.path.realpath(sys.executable)
    assert prov["command_line"] == [sys.executable, "-c", CHILD_SCRIPT]
    assert prov["cwd"] == cwd
    assert prov["uid"] == os.getuid()
    assert prov["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert prov["host"] == socket.gethostname()
    assert prov["git"] == {"commit": SHA_MAIN, "branch": "main", "repository": ORIGIN,
                           "root": repo, "dirty": None}
    assert prov["python"] == "%d.%d" % sys.version_info[:2]
    assert prov["environment"] == {}
    assert "gone" not in prov
    json.dumps(prov)


def test_thread_id_maps_to_its_process(tmp_path):
    with running_child(tmp_path) as (proc, thread_id):
        assert thread_id != proc.pid
        assert describe_process(thread_id)["pid"] == proc.pid


def test_gone_process():
    with open("/proc/sys/kernel/pid_max") as f:
        never_a_pid = int(f.read()) + 1
    assert describe_process(never_a_pid) == {"pid": never_a_pid, "gone": True,
                                             "host": socket.gethostname()}
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert describe_process(finished.pid)["gone"] is True  # Linux does not reuse pids at once


def test_environment_allow_list_never_copies_secrets(tmp_path):
    env = {"SLURM_JOB_ID": "42", "HF_TOKEN": "s3cr3t-hf", "MY_API_KEY": "s3cr3t-key",
           "db_password": "s3cr3t-db", "MYJOB_NAME": "bert", "PATH": os.environ["PATH"]}
    with running_child(tmp_path, env) as (proc, _thread_id):
        default = describe_process(proc.pid)
        everything = describe_process(proc.pid, ["*"])
        listed = describe_process(proc.pid, ("HF_TOKEN", "MY_*", "db_*", "MYJOB_*"))
    assert default["environment"] == {"SLURM_JOB_ID": "42"}
    assert everything["environment"] == {"SLURM_JOB_ID": "42", "MYJOB_NAME": "bert",
                                         "PATH": os.environ["PATH"]}
    assert listed["environment"] == {"MYJOB_NAME": "bert"}
    for prov in (default, everything, listed):
        assert "s3cr3t" not in json.dumps(prov)


def test_packages_of_mapped_native_libraries(tmp_path):
    with running_child(tmp_path, None, "numpy") as (proc, _thread_id):
        prov = describe_process(proc.pid)
    assert prov["packages"]["numpy"] == numpy.__version__
    lineage = lineage_from_provenance(prov)
    assert lineage["environment"]["packages"]["numpy"] == numpy.__version__
    assert lineage["environment"]["python"] == prov["python"]
    assert lineage["environment"]["host"] == socket.gethostname()
    assert "code" not in lineage or lineage["code"]["git_commit"]


def test_lineage_from_provenance(repo):
    with running_child(repo) as (proc, _thread_id):
        prov = describe_process(proc.pid)
    lineage = lineage_from_provenance(prov)
    assert lineage["code"] == {"git_commit": SHA_MAIN, "repository": ORIGIN, "branch": "main"}
    assert set(lineage["environment"]) <= {"python", "packages", "cuda", "host"}
    assert lineage_from_provenance({"pid": 1, "gone": True, "host": "h"}) == {
        "environment": {"host": "h"}}


def test_describe_this_process():
    prov = describe_this_process()
    assert prov["pid"] == os.getpid()
    assert prov["executable"] == os.path.realpath(sys.executable)
    assert prov["packages"]["numpy"] == numpy.__version__  # this test module imports numpy


# -- git, from the files -----------------------------------------------------------------------

def test_git_packed_refs(tmp_path):
    root = make_git_repo(tmp_path / "r", packed_refs={"refs/heads/main": SHA_PACKED,
                                                      "refs/tags/v1": SHA_MAIN})
    info = git_info(os.path.join(root))
    assert info == {"commit": SHA_PACKED, "branch": "main", "repository": ORIGIN,
                    "root": root, "dirty": None}


def test_git_loose_ref_wins_over_packed(tmp_path):
    root = make_git_repo(tmp_path / "r", loose_refs={"refs/heads/main": SHA_MAIN},
                         packed_refs={"refs/heads/main": SHA_PACKED})
    assert git_info(root)["commit"] == SHA_MAIN


def test_git_detached_head_and_no_origin(tmp_path):
    root = make_git_repo(tmp_path / "r", head=SHA_FEATURE + "\n", origin=None)
    assert git_info(root) == {"commit": SHA_FEATURE, "branch": None, "repository": root,
                              "root": root, "dirty": None}


def test_git_unborn_branch(tmp_path):
    root = make_git_repo(tmp_path / "r")
    assert git_info(root)["commit"] is None
    assert git_info(root)["branch"] == "main"


def test_git_file_pointing_to_a_worktree_dir(tmp_path):
    main = make_git_repo(tmp_path / "main", loose_refs={"refs/heads/main": SHA_MAIN,
                                                       "refs/heads/feature": SHA_FEATURE})
    wt_git_dir = os.path.join(main, ".git", "worktrees", "wt")
    write(os.path.join(wt_git_dir, "HEAD"), "ref: refs/heads/feature\n")
    write(os.path.join(wt_git_dir, "commondir"), "../..\n")
    wt = tmp_path / "wt"
    write(str(wt / ".git"), "gitdir: ../main/.git/worktrees/wt\n")
    os.makedirs(wt / "src")
    assert git_info(str(wt / "src")) == {"commit": SHA_FEATURE, "branch": "feature",
                                         "repository": ORIGIN, "root": str(wt), "dirty": None}


def test_git_file_with_absolute_gitdir(tmp_path):
    modules = make_git_repo(tmp_path / "store", head=SHA_PACKED + "\n", origin=None)
    sub = tmp_path / "super" / "sub"
    write(str(sub / ".git"), f"gitdir: {os.path.join(modules, '.git')}\n")
    assert git_info(str(sub))["commit"] == SHA_PACKED


def test_git_unreadable_or_absent(tmp_path):
    write(str(tmp_path / "broken" / ".git"), "gitdir: /nonexistent/place\n")
    assert git_info(str(tmp_path / "broken")) is None
    make_git_repo(tmp_path / "evil", head="ref: ../../../../etc/passwd\n")
    assert git_info(str(tmp_path / "evil"))["commit"] is None
    os.makedirs(tmp_path / "plain")
    if git_info(str(tmp_path)) is None:  # tmp_path itself may live in a repository
        assert git_info(str(tmp_path / "plain")) is None
    assert git_info(str(tmp_path / "does" / "not" / "exist")) == git_info(str(tmp_path))


def test_origin_url_credentials_are_removed(tmp_path):
    root = make_git_repo(tmp_path / "r", head=SHA_MAIN + "\n",
                         origin='"https://bot:ghp_s3cr3t@github.com/team/x.git"')
    assert git_info(root)["repository"] == "https://github.com/team/x.git"
    assert strip_url_credentials("https://ghp_s3cr3t@host/x") == "https://host/x"
    assert strip_url_credentials("ssh://git:pw@host/x") == "ssh://git@host/x"
    assert strip_url_credentials(ORIGIN) == ORIGIN


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_matches_real_git(tmp_path):
    def git(*args, cwd):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e",
                               "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                              capture_output=True, text=True).stdout.strip()
    root = str(tmp_path / "real")
    os.makedirs(root)
    git("init", "-q", cwd=root)
    git("remote", "add", "origin", "https://example.com/real.git", cwd=root)
    write(os.path.join(root, "a.txt"), "a")
    git("add", "a.txt", cwd=root)
    git("commit", "-q", "-m", "first", cwd=root)
    git("pack-refs", "--all", cwd=root)
    assert git_info(root) == {"commit": git("rev-parse", "HEAD", cwd=root), "branch": "main",
                              "repository": "https://example.com/real.git", "root": root,
                              "dirty": None}
    worktree = str(tmp_path / "wt")
    git("worktree", "add", "-q", "-b", "side", worktree, cwd=root)
    write(os.path.join(worktree, "b.txt"), "b")
    git("add", "b.txt", cwd=worktree)
    git("commit", "-q", "-m", "second", cwd=worktree)
    info = git_info(worktree)
    assert info["commit"] == git("rev-parse", "HEAD", cwd=worktree)
    assert info["branch"] == "side" and info["root"] == worktree
    assert info["repository"] == "https://example.com/real.git"


# -- parsers of mapped file names --------------------------------------------------------------

def test_cuda_and_python_from_file_names():
    assert cuda_version(["/usr/lib/libc.so.6", "/opt/x/nvidia/cuda_runtime/lib/libcudart.so.12"]) \
        == "12"
    assert cuda_version(["/usr/local/cuda/lib64/libcudart.so.11.8.89"]) == "11.8"
    assert cuda_version(["/usr/lib/libcudart_static.a"]) is None
    assert python_version("/usr/bin/python3", ["/usr/lib/libpython3.12.so.1.0"]) == "3.12"
    assert python_version("/usr/bin/python3", []) == "3"
    assert python_version("/usr/bin/python3.10", None) == "3.10"
    assert python_version("/usr/bin/bash", ["/usr/lib/libpython3.12.so.1.0"]) is None


def test_package_versions_from_a_site_packages_dir(tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    files = ["torch/lib/libtorch_cpu.so", "numpy.libs/libopenblas.so",
             "sklearn/_cython.so", "_cffi_backend.cpython-311-x86_64-linux-gnu.so",
             "nvidia/cublas/lib/libcublas.so.12", "mystery/_ext.so"]
    for rel in files:
        write(str(site / rel), "")
    for dist in ("torch-2.5.1+cpu.dist-info", "numpy-1.26.4.dist-info",
                 "nvidia_cublas_cu12-12.4.5.8.dist-info", "nvidia_cudnn_cu12-9.1.0.dist-info"):
        os.makedirs(site / dist)
    write(str(site / "scikit_learn-1.5.2.dist-info" / "top_level.txt"), "sklearn\n")
    write(str(site / "cffi-1.17.1.dist-info" / "top_level.txt"), "_cffi_backend\ncffi\n")
    write(str(site / "nvidia_cublas_cu12-12.4.5.8.dist-info" / "top_level.txt"), "nvidia\n")
    write(str(site / "nvidia_cudnn_cu12-9.1.0.dist-info" / "top_level.txt"), "nvidia\n")
    mapped = [str(site / rel) for rel in files] + ["/usr/lib/x86_64-linux-gnu/libc.so.6"]
    assert mapped_package_versions(mapped) == {
        "cffi": "1.17.1", "numpy": "1.26.4", "scikit_learn": "1.5.2", "torch": "2.5.1+cpu"}
