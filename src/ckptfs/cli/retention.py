"""`ckptfs retention set|show|clear`, `ckptfs gc` and `ckptfs delete`: retention
policies, garbage collection and manual deletion (docs/retention.md). Changing a policy
and deleting need maintainer on the project: the store's methods check it (gc on every
project it would delete in).

The policies' own functions (ckptfs.store.retention, over the catalog) are imported by
the commands that use them, not at start-up."""
import click

from ckptfs.cli._common import (EVERY_PROJECT, complete_names, echo_json, examples, human_bytes, json_option,
                                parse_date, progress_bar, version_project, with_store)
from ckptfs.store import parse_version_ref
from ckptfs.store.names import validate_name


def parse_scope(ref: str) -> tuple[str, str | None]:
    """PROJECT, PROJECT/RUN or * -> (project, run or None)."""
    parts = [p for p in ref.strip("/").split("/") if p] if ref else []
    if ref.strip() == EVERY_PROJECT:
        return EVERY_PROJECT, None
    if not 1 <= len(parts) <= 2:
        raise click.BadParameter(f"expected PROJECT, PROJECT/RUN or *, got {ref!r}")
    for part, what in zip(parts, ("project", "run")):
        validate_name(part, what)
    return parts[0], parts[1] if len(parts) == 2 else None


def scope_project(scope: str, **_) -> str:
    return parse_scope(scope)[0]


def shown_project(scope: str, **_) -> str | None:
    """The project whose policies `retention show` shows (None: every project the caller
    may read; `*` alone shows them too)."""
    project = parse_scope(scope)[0] if scope else None
    return None if project == EVERY_PROJECT else project


# -- retention ------------------------------------------------------------------------------
@click.group(epilog=examples(
    "ckptfs retention set /data/ckpts bert keep_last=5",
    "ckptfs retention show /data/ckpts"))
def retention():
    """Retention policies: which versions `ckptfs gc` deletes. Set on a run (P/R), a
    project (P), or `*` (the default of every project); the most specific one applies,
    whole. Versions with an alias, and explicit parents of kept versions, are always
    kept."""


@retention.command("set", epilog=examples(
    "ckptfs retention set /data/ckpts bert keep_last=5 keep_best=3 metric=eval_loss mode=min",
    "ckptfs retention set /data/ckpts '*' keep_last=20"))
@click.argument("store")
@click.argument("scope", metavar="PROJECT[/RUN]|*", shell_complete=complete_names(2, every_depth=True))
@click.argument("rules", nargs=-1, required=True, metavar="RULE=VALUE...")
@with_store("maintainer", checked_by_store=True, project=scope_project)
def retention_set(s, store, scope, rules):
    """Set the policy of a project or run (replacing the one set there before).

    \b
    Rules (any subset; a version is kept if any rule keeps it):
      keep_last=N        the N newest versions of each run
      keep_best=K        the K best by metric and mode
      metric=NAME        default: the project's primary_metric
      mode=min|max       default: the project's mode
      max_age_days=D     versions sealed within the last D days
    """
    from ckptfs.store.retention import describe_policy, describe_scope, parse_rules, policy_scope
    project, run = parse_scope(scope)
    old = s.retention_policy(project, run)
    policy = s.set_retention_policy(project, run, parse_rules(rules))
    where = describe_scope(policy_scope(project, run))
    replaced = f" (replaces {describe_policy(old)})" if old and old != policy else ""
    click.echo(f"retention of {where}: {describe_policy(policy)}{replaced}")
    click.echo("nothing is deleted until `ckptfs gc STORE` runs; `ckptfs gc STORE --dry-run` "
               "shows what it would delete")


@retention.command("clear", epilog=examples("ckptfs retention clear /data/ckpts bert/sweep-7"))
@click.argument("store")
@click.argument("scope", metavar="PROJECT[/RUN]|*", shell_complete=complete_names(2, every_depth=True))
@with_store("maintainer", checked_by_store=True, project=scope_project)
def retention_clear(s, store, scope):
    """Remove the policy set on exactly this project or run."""
    from ckptfs.store.retention import describe_policy, describe_scope, policy_scope
    project, run = parse_scope(scope)
    old = s.clear_retention_policy(project, run)
    click.echo(f"retention of {describe_scope(policy_scope(project, run))} cleared "
               f"(was {describe_policy(old)})")


@retention.command("show", epilog=examples(
    "ckptfs retention show /data/ckpts",
    "ckptfs retention show /data/ckpts bert --json"))
@click.argument("store")
@click.argument("scope", required=False, default="", metavar="[PROJECT[/RUN]]",
                shell_complete=complete_names(2, every_depth=True))
@json_option("the policies and what they keep")
@with_store("reader", "read retention policies", project=shown_project, path="scope")
def retention_show(s, store, scope, as_json):
    """The policies set, and the policy in force for each run with where it comes from."""
    from ckptfs.store.retention import describe_policy, describe_scope, policy_scope
    project, run = parse_scope(scope) if scope else (None, None)
    policies = s.retention_policies()
    projects = [project] if project and project != EVERY_PROJECT else \
        s.readable_projects(None, s.projects())
    runs = [(p, r) for p in projects for r in ([run] if run else s.runs(p))]
    in_force = [(p, r, s.effective_retention(p, r)) for p, r in runs]
    if project not in (None, EVERY_PROJECT):
        policies = {k: v for k, v in policies.items()
                    if k in (EVERY_PROJECT, project, policy_scope(project, run))
                    or (run is None and k.startswith(project + "/"))}
    if as_json:
        echo_json({
            "policies": policies,
            "runs": [{"project": p, "run": r, "policy": found[0] if found else None,
                      "from": found[1] if found else None} for p, r, found in in_force]})
        return
    click.echo("policies set:" if policies else "no retention policy is set: gc deletes nothing")
    for key in sorted(policies, key=lambda k: (k != EVERY_PROJECT, "/" in k, k)):
        click.echo(f"  {describe_scope(key)}: {describe_policy(policies[key])}")
    if in_force:
        click.echo("in force:")
    width = max((len(f"{p}/{r}") for p, r, _ in in_force), default=0)
    for p, r, found in in_force:
        text = (f"{describe_policy(found[0])}  (from {describe_scope(found[1])})" if found
                else "no policy: every version is kept")
        click.echo(f"  {p + '/' + r:<{width}}  {text}")


# -- gc ------------------------------------------------------------------------------------
def deletion_line(decision, dry_run: bool) -> str:
    from ckptfs.store.retention import describe_policy, describe_scope
    verb = "would delete" if dry_run else "deleted"
    policy = decision.policy or {}
    source = (f"  [{describe_policy(policy['rules'])}, from {describe_scope(policy['scope'])}]"
              if policy else "")
    return f"{verb} {decision.ref}: {decision.reason}{source}"


@click.command(epilog=examples(
    "ckptfs gc /data/ckpts --dry-run",
    "ckptfs gc /data/ckpts",
    "ckptfs gc /data/ckpts --dry-run --as-of 2026-12-01 --json"))
@click.argument("store")
@click.option("--dry-run", is_flag=True, help="Change nothing: say what would be deleted and reclaimed.")
@click.option("--as-of", "as_of", metavar="DATE",
              help="With --dry-run: plan as if it were DATE (max_age_days counts from it).")
@json_option("the report")
@with_store("maintainer", checked_by_store=True)  # on each project it deletes in
def gc(s, store, dry_run, as_of, as_json):
    """Delete the versions retention policies do not keep, and reclaim the space of
    every chunk no version uses any more (crash-safe; docs/retention.md)."""
    if as_of and not dry_run:
        raise click.UsageError("--as-of plans for another date: it only goes with --dry-run")
    now = parse_date(as_of) if as_of is not None else None
    bar = progress_bar(desc="gc", disable=None, leave=False)

    def progress(phase, done, total):
        bar.set_description(f"gc: {phase}")
        bar.total, bar.n = total, done
        bar.refresh() if done % 256 == 0 or done == total else None
    try:
        report = s.collect_garbage(dry_run=dry_run, now=now, progress=progress)
    finally:
        bar.close()
    if as_json:
        out = dict(vars(report))
        out["deletions"] = [{"ref": d.ref, "digest": d.digest, "reason": d.reason,
                             "policy": d.policy} for d in report.deletions]
        echo_json(out)
        return
    print_gc_report(report)


def print_gc_report(r):
    would = "would be " if r.dry_run else ""
    if r.pending_recovery:
        click.echo("an interrupted gc left work behind: the next gc finishes it first")
    if r.recovered:
        click.echo(r.recovered)
    for decision in r.deletions:
        click.echo(deletion_line(decision, r.dry_run))
    click.echo(f"{len(r.deletions)} version(s) {would or ''}deleted by retention policy"
               + ("" if r.deletions else " (none)"))
    click.echo(f"chunks: {r.freed_chunks} {would}reclaimed ({human_bytes(r.freed_bytes)} stored; "
               f"{human_bytes(r.freed_by_deletions)} of it used only by the versions "
               f"{'that would be ' if r.dry_run else ''}deleted now)")
    kept = f", {len(r.old_packs_kept)} kept for a concurrent import" if r.old_packs_kept else ""
    into = f" into {len(r.new_packs)} new" if r.new_packs else ""
    click.echo(f"packs: {len(r.packs_rewritten)} {would}rewritten{into} "
               f"({human_bytes(r.bytes_copied)} of live records copied), "
               f"{len(r.packs_dropped)} {would}dropped{kept} (rewrite_below={r.threshold})")
    if r.dead_bytes_left > 0:
        click.echo(f"  {human_bytes(r.dead_bytes_left)} of dead records stay in packs above the "
                   "threshold")
    if r.superseded:
        click.echo("another gc changed the packs meanwhile: this one's copies were dropped; "
                   "run gc again")
    if r.retired_deleted:
        click.echo(f"deleted {len(r.retired_deleted)} retired pack(s)")
    if r.retired_waiting:
        click.echo(f"{len(r.retired_waiting)} pack(s) retired, deleted after {r.delete_after} "
                   f"(gc.grace_seconds={r.grace_seconds:g}: a later gc deletes them)")
    if r.leftovers_removed:
        verb = "would remove" if r.dry_run else "removed"
        click.echo(f"{verb} {len(r.leftovers_removed)} pack(s) left by interrupted imports")
    if r.leftovers_kept:
        verb = "would remove" if r.dry_run and not r.leftovers_reason else "kept"
        why = f": {r.leftovers_reason}, and they may be its packs" if r.leftovers_reason else ""
        click.echo(f"{verb} {len(r.leftovers_kept)} pack(s) no version uses{why}")
    if r.revived:
        click.echo(f"{r.revived} chunk(s) stayed: an import sealed meanwhile uses them")
    click.echo(f"on disk: {human_bytes(r.pack_bytes_before)} of packs -> "
               f"{human_bytes(r.pack_bytes_after)}" + (" (estimated)" if r.dry_run else ""))


# -- delete --------------------------------------------------------------------------------
@click.command(epilog=examples(
    'ckptfs delete /data/ckpts bert/run-42/step-100 --reason "trained on the leaked split"'))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION", shell_complete=complete_names(3))
@click.option("--reason", required=True, metavar="TEXT", help="Why (kept in the journal and the tombstone).")
@with_store("maintainer", checked_by_store=True, project=version_project)
def delete(s, store, ref, reason):
    """Delete one version by hand, under the rules retention keeps (refused if it has an
    alias or is the explicit parent of a live version). Its sidecar stays as a
    tombstone; its space is reclaimed by the next `ckptfs gc`."""
    project, run, version = parse_version_ref(ref)
    entry = s.delete_version(project, run, version, reason)
    click.echo(f"deleted {ref} ({entry['reason']}); its sidecar stays under "
               f".ckptfs/deleted/{ref}.json; its space is reclaimed by the next "
               f"`ckptfs gc {store}`")


COMMANDS = (retention, gc, delete)
