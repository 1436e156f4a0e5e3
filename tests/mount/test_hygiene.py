"""Nothing leaked through a real mount: what the daemon creates in a store stays private
whatever the umask, the inbox refuses a bad name with EINVAL and a log line, and a
sidecar keeps no secrets of the writer. The CLI side: tests/cli/test_hygiene.py."""
import errno
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import hygiene as helpers
from tests.helpers.cli import run_cli_checked
from tests.helpers.hygiene import (
    BAD_NAMES,
    REDACTED_ARGV,
    SECRET_ARGV,
    SECRET_ENV,
    assert_no_secret,
    readable_by_others,
    write_file,
)
from tests.helpers.waiting import wait_for

open_umask = helpers.open_umask  # a fixture (tests/helpers/hygiene.py)


def test_a_store_is_private_whatever_the_umask(tmp_path, mount, open_umask):
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    src = tmp_path / "ckpt"
    write_file(str(src / "model.bin"), os.urandom(300_000))
    run_cli_checked("import", store, src, "p/r/v1")
    run_cli_checked("import", store, src, "p/r/v2")
    mnt = mount(store, "--seal-after", "3600")
    write_file(f"{mnt}/inbox/p/r2/step-1/model.bin", os.urandom(200_000))
    run_cli_checked("seal", store, "p/r2/step-1")
    wait_for(lambda: os.path.isdir(f"{mnt}/projects/p/r2/step-1"), "the seal to show")
    run_cli_checked("delete", store, "p/r/v1", "--reason", "test")
    run_cli_checked("gc", store)
    assert readable_by_others(store) == []


@pytest.mark.parametrize("label", ["not UTF-8", "bidi override", "not NFC", "star",
                                   "leading dash", "trailing space"])
def test_the_inbox_refuses_a_bad_name_with_einval_and_a_log_line(label, tmp_path, mount):
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    mnt = mount(store, "--seal-after", "3600")
    bad = os.fsencode(BAD_NAMES[label])
    # (below inbox/p/r/ is the job's own output: its names become version names through
    # the layout, which falls back to a valid one; docs/mount.md)
    for parent in (b"", b"p/"):
        if parent:
            os.makedirs(os.path.join(mnt, "inbox", os.fsdecode(parent)), exist_ok=True)
        with pytest.raises(OSError) as refused:
            os.mkdir(os.path.join(os.fsencode(mnt), b"inbox/" + parent + bad))
        assert refused.value.errno == errno.EINVAL, (parent, refused.value)

    def logged():
        with open(os.path.join(store, "logs", "mount.log"), errors="replace") as f:
            return f.read().count("names are printable Unicode (NFC)") >= 2
    wait_for(logged, "the refusals in the mount log")
    assert sorted(os.listdir(f"{mnt}/inbox")) == ["p"]


WRITER = """import os, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as f:
    f.write(b"weights" * 1000)
"""


def test_a_sidecar_keeps_no_secrets_of_the_writer(tmp_path, mount):
    """The whole way: a job with secrets in its environment and argv writes into the
    mount of a project that allows every variable; the sealed sidecar has none."""
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    run_cli_checked("config", "set", store, "p", "env_allow=*")
    mnt = mount(store, "--seal-after", "3600")
    env = {**SECRET_ENV, "PATH": os.environ["PATH"]}
    subprocess.run([sys.executable, "-c", WRITER, f"{mnt}/inbox/p/r/step-1/model.bin",
                    *SECRET_ARGV], env=env, check=True)
    run_cli_checked("seal", store, "p/r/step-1")
    sidecar = run_cli_checked("show", store, "p/r/step-1").stdout.decode()
    assert_no_secret(sidecar)
    provenance = json.loads(sidecar)["provenance"]
    assert provenance["environment"]["DATABASE_URL"] == "postgres://u:<redacted>@db/x"
    assert provenance["command_line"][-len(SECRET_ARGV):] == REDACTED_ARGV
    with open(os.path.join(store, "journal", "journal.jsonl"), errors="replace") as f:
        assert_no_secret(f.read())
