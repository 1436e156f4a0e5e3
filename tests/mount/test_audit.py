"""MOUNT/.ckptfs/audit.jsonl: the journal, read-only, through a real mount. The audit
log's commands: tests/cli/test_audit.py."""
import json
import os
import subprocess

import pytest

from tests.helpers import audit as helpers

audited = helpers.audited  # a fixture (tests/helpers/audit.py)


def test_audit_jsonl_in_the_mount_is_the_journal_and_read_only(audited, mount):
    store, journal, _ = audited
    mnt = mount(store)
    view = os.path.join(mnt, ".ckptfs", "audit.jsonl")
    assert sorted(os.listdir(os.path.join(mnt, ".ckptfs"))) == ["audit.jsonl", "deleted", "stats.json"]
    run_dir = os.path.join(mnt, "projects", "nlp", "run")
    subprocess.run(["ln", "-sfn", "v1", os.path.join(run_dir, "prod")], check=True)
    with open(view, "rb") as f, open(journal, "rb") as g:
        shown, actual = f.read(), g.read()
    assert shown == actual
    moved = [json.loads(line) for line in shown.splitlines()
             if json.loads(line)["type"] == "alias.set"][-1]
    assert (moved["alias"], moved["version"], moved["previous"]) == ("prod", "v1", "v2")
    assert moved["uid"] == os.getuid() and moved["pid"] != 0
    grep = subprocess.run(["grep", "-c", '"type":"alias.set"', view], capture_output=True, text=True)
    assert grep.stdout.strip() == "4"  # two here, then ln -sfn: temporary alias, then prod
    with pytest.raises(OSError) as refused:
        open(view, "ab")
    assert refused.value.errno in (30, 13)  # EROFS (or EACCES from the 0444 mode)
