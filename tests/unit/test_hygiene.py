"""The provenance of a process keeps no secrets (its environment and command line,
redacted). The same in a sidecar written through a mount: tests/mount/test_hygiene.py."""
import json
import os
import subprocess
import sys

from tests.helpers.hygiene import (
    REDACTED_ARGV,
    SECRET_ARGV,
    SECRET_ENV,
    assert_no_secret,
)


def test_the_provenance_of_a_process_keeps_no_secrets(tmp_path):
    from ckptfs.meta.provenance import describe_process
    env = {**SECRET_ENV, "PATH": os.environ["PATH"]}
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                              *SECRET_ARGV], env=env, stdin=subprocess.PIPE)
    try:
        prov = describe_process(child.pid, ["*"])   # even when everything is allowed
    finally:
        child.communicate(b"")
    assert_no_secret(json.dumps(prov))
    environment = prov["environment"]
    assert environment["DATABASE_URL"] == "postgres://u:<redacted>@db/x"
    assert environment["UPLOAD_TARGET"] == "https://<redacted>@github.com/o/r"
    assert environment["NOTES"] == "key <redacted> in the middle"
    assert environment["MYJOB_NAME"] == "bert"
    for name in ("GH_PAT", "SSHPASS", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "SESSION_COOKIE"):
        assert name not in environment
    assert prov["command_line"][-len(SECRET_ARGV):] == REDACTED_ARGV
