"""`ckptfs audit`: the journal as an audit log, and the check of its hash chain."""
import json
from datetime import datetime

import click

from ckptfs.cli._common import EXIT_DAMAGE, examples, fail, json_option, parse_date, with_store

DETAIL_KEYS = ("alias", "version", "previous", "digest", "settings")


def entry_time(entry: dict) -> datetime:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))


def describe(entry: dict) -> str:
    from ckptfs.store.retention import describe_policy, describe_scope  # the catalog: not at start-up
    where = "/".join(entry[k] for k in ("project", "run") if entry.get(k))
    if entry["type"] == "version.sealed":
        where += f"/{entry['version']}"
        details = f"digest {entry['digest'][:16]}…, {entry.get('files', 0)} files"
        if entry.get("signature"):
            details += f", signed by key {entry['signature'].get('key_id')}"
    elif entry["type"].startswith("alias."):
        details = f"{entry['alias']} -> {entry['version']}"
        if entry.get("previous"):
            details += f" (was {entry['previous']})"
    elif entry["type"] == "project.settings":
        details = json.dumps(entry.get("settings"), sort_keys=True)
    elif entry["type"] in ("key.set", "key.unset"):
        details = f"signing key {entry.get('key_id')}"
    elif entry["type"] == "project.schema":
        details = "set" if entry.get("schema") is not None else "cleared"
    elif entry["type"].startswith("access."):
        details = describe_access(entry)
    elif entry["type"] == "version.deleted":
        where += f"/{entry['version']}"
        policy = entry.get("policy")
        how = "by hand" if entry.get("manual") or not policy else \
            f"by retention ({describe_policy(policy['rules'])}, from {describe_scope(policy['scope'])})"
        details = f"{how}: {entry.get('reason')}"
    elif entry["type"] == "retention.set":
        details = describe_policy(entry["policy"]) if entry.get("policy") else "cleared"
    else:
        details = json.dumps({k: entry[k] for k in DETAIL_KEYS if k in entry})
    who = entry.get("user") or f"uid {entry.get('uid')}"
    return f"{entry['seq']:>6}  {entry['time'][:19]}Z  {who:<10} {entry['type']:<16} {where}  {details}"


def describe_access(entry: dict) -> str:
    kind = entry["type"]
    was = f" (was {entry['previous']})" if entry.get("previous") else ""
    if kind == "access.granted":
        return f"{entry.get('principal')} {entry.get('role')}{was}"
    if kind == "access.revoked":
        return f"{entry.get('principal')}{was}"
    if kind == "access.enforcement":
        return "enforcement " + ("on" if entry.get("enabled") else "off")
    if kind == "access.refused":
        path = f" {entry['path']}" if entry.get("path") else ""
        return f"{entry.get('operation')}{path} (needs {entry.get('role')})"
    return ""


def audited_store(words, **_) -> str:
    """The STORE of `audit [verify] STORE`."""
    if words[0] == "verify":
        if len(words) != 2:
            raise click.UsageError("usage: ckptfs audit verify STORE")
        return words[1]
    if len(words) != 1:
        raise click.UsageError("usage: ckptfs audit STORE [--since DATE] [--project P]")
    return words[0]


@click.command(context_settings={"ignore_unknown_options": False}, epilog=examples(
    "ckptfs audit /data/ckpts --since 2026-11-01 --project bert",
    "ckptfs audit verify /data/ckpts",
    "ckptfs audit /data/ckpts --json | jq -r .type"))
@click.argument("words", nargs=-1, required=True, metavar="[verify] STORE")
@click.option("--since", metavar="DATE", help="Only events at or after DATE (UTC).")
@click.option("--project", metavar="P", help="Only events of project P.")
@json_option("the entries, one JSON object a line (JSON lines)")
# Each user sees the entries of the projects they can read (docs/access.md); the hash
# chain shows no project's content.
@with_store("reader", store=audited_store)
def audit(s, words, since, project, as_json):
    """The store's audit log (every seal, alias move, setting, schema and access change,
    and refusal; when roles are enforced, of the projects you can read), or with
    `verify`, check its hash chain and name the first altered, removed or reordered
    entry (exit 3 if there is one)."""
    if words[0] == "verify":
        return verify_journal(s)
    start = parse_date(since) if since else None
    for entry in s.journal_entries():
        if start and entry_time(entry) < start:
            continue
        if project and entry.get("project") != project:
            continue
        if not s.entry_visible(None, entry):  # enforced: only projects you can read
            continue
        click.echo(json.dumps(entry, sort_keys=True) if as_json else describe(entry))


def verify_journal(s):
    report = s.check_journal()
    if report["ok"]:
        click.echo(f"journal ok: {report['entries']} entries, hash chain intact")
        return
    fail(f"journal damaged at line {report['line']}: {report['problem']}", EXIT_DAMAGE)


COMMANDS = (audit,)
