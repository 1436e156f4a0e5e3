"""The journal as a tamper-evident audit log: `ckptfs audit`, `ckptfs audit verify` and
MOUNT/.ckptfs/audit.jsonl (issue 6, first part)."""
import json

from ckptfs.store import Store
from tests.helpers import audit as helpers
from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint

audited = helpers.audited  # a fixture (tests/helpers/audit.py)


def write_lines(path, lines):
    with open(path, "wb") as f:
        f.writelines(lines)


def verify_error(store) -> str:
    proc = run_cli_checked("audit", "verify", store, rc=3)
    return proc.stderr.decode()


def test_an_intact_journal_verifies(audited):
    store, _, _ = audited
    proc = run_cli_checked("audit", "verify", store)
    assert proc.stdout.decode().strip() == "journal ok: 6 entries, hash chain intact"


def test_an_edited_entry_is_named(audited):
    store, journal, lines = audited
    lines[1] = lines[1].replace(b'"files":6', b'"files":60')
    assert b'"files":60' in lines[1]
    write_lines(journal, lines)
    assert "at line 2: entry 2 was altered" in verify_error(store)


def test_a_removed_entry_is_named(audited):
    store, journal, lines = audited
    write_lines(journal, lines[:2] + lines[3:])
    assert "at line 3: entry 3 is missing (line 3 holds entry 4): entries were removed" \
        in verify_error(store)


def test_reordered_entries_are_named(audited):
    store, journal, lines = audited
    write_lines(journal, [lines[0], lines[2], lines[1]] + lines[3:])
    assert "at line 2: line 2 holds entry 3, and entry 2 comes later: entries were reordered" \
        in verify_error(store)


def test_entries_cut_off_the_end_are_named(audited):
    store, journal, lines = audited
    write_lines(journal, lines[:3])
    assert "the journal ends at entry 3, but entries up to 6 were committed" in verify_error(store)


def test_an_edited_last_entry_is_named(audited):
    """No later entry names its hash: the index's record of the last commit does."""
    store, journal, lines = audited
    lines[5] = lines[5].replace(b'"loss"', b'"lass"')
    write_lines(journal, lines)
    assert "at line 6: entry 6 was altered (it is not the entry that was committed)" \
        in verify_error(store)


def test_audit_lists_events_with_who_and_filters(audited, tmp_path):
    store, _, _ = audited
    with Store.open(store) as s:
        s.import_directory(make_checkpoint(tmp_path / "c", step=3), "other", "run", "v1")
    listing = run_cli_checked("audit", store).stdout.decode().splitlines()
    assert [line.split()[3] for line in listing] == [
        "access.granted", "version.sealed", "version.sealed", "alias.set", "alias.set", "project.settings",
        "version.sealed"]
    assert all(line.split()[2] == "root" for line in listing)
    assert "prod -> v2 (was v1)" in listing[4]
    only_nlp = run_cli_checked("audit", store, "--project", "nlp").stdout.decode().splitlines()
    assert len(only_nlp) == 5
    entries = [json.loads(line) for line in
               run_cli_checked("audit", store, "--json").stdout.decode().splitlines()]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6, 7]
    assert {e["user"] for e in entries} == {"root"} and all(e["uid"] == 0 for e in entries)
    later = run_cli_checked("audit", store, "--since", "2999-01-01").stdout.decode()
    assert later == ""
    bad = run_cli_checked("audit", store, "--since", "yesterday", rc=2)
    assert "is not a date" in bad.stderr.decode()
