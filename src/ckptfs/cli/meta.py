"""`ckptfs` commands over the catalog: show, find, log, lineage, tag/untag/tags, config,
schema. Changing aliases, settings and schemas needs maintainer: the store's methods
check it."""
import json
import sys

import click

from ckptfs.cli._common import (EVERY_PROJECT, cell, complete_names, echo_json, examples, human_bytes,
                                json_option, print_table, run_project, settings_project,
                                version_project, version_ref, with_store)
from ckptfs.meta import render
from ckptfs.meta.lineage import RENDERERS, lineage_of, parent_of
from ckptfs.meta.sidecar import file_list, sidecar_of
from ckptfs.store import NotFoundError, SettingError, parse_version_ref
from ckptfs.store.names import validate_name


def split_project_run(ref: str) -> tuple[str | None, str | None]:
    parts = [p for p in ref.strip("/").split("/") if p] if ref else []
    if len(parts) > 2:
        raise click.BadParameter(f"expected PROJECT or PROJECT/RUN, got {ref!r}")
    for part, what in zip(parts, ("project", "run")):
        validate_name(part, what)
    return (parts + [None, None])[0], (parts + [None, None])[1]


def logged_project(ref: str, **_) -> str | None:
    """The project `log` shows (None: every project the caller may read)."""
    return split_project_run(ref)[0]


def require_known(s, project: str | None, run: str | None) -> None:
    """Fail unless the store has (or had: deleted versions) that project and run, so a
    typo is an error rather than an empty answer."""
    if project is None:
        return
    if run is None:
        if project not in s.projects() and not s.tombstones(project):
            raise NotFoundError(f"no project {project!r} in the store")
    elif run not in s.runs(project) and not s.tombstones(project, run):
        raise NotFoundError(f"no run {project + '/' + run!r} in the store")


def version_path(doc: dict) -> str:
    return f"projects/{doc['project']}/{doc['run']}/{doc['version']}"


@click.command(epilog=examples(
    "ckptfs show /data/ckpts bert/run-42/step-500",
    "ckptfs show /data/ckpts bert/run-42/step-500 | jq .metrics"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION", shell_complete=complete_names(3))
@with_store("reader", "read", project=version_project, path="ref")
def show(s, store, ref):
    """Print the sidecar of a version (what MOUNT/projects/P/R/V.json shows); of a deleted
    one, its tombstone (what MOUNT/.ckptfs/deleted/P/R/V.json shows). VERSION may be an
    alias (latest, best, production, …)."""
    project, run, version = version_ref(s, ref)
    sys.stdout.buffer.write(render(sidecar_of(s, project, run, version, deleted=True)))


# -- find --------------------------------------------------------------------------------
@click.command(epilog=examples(
    "ckptfs find /data/ckpts 'metrics.eval_loss < 0.3 and lineage.data.version ~ \"v3*\"'",
    "ckptfs find /data/ckpts 'tags == production' --format paths | xargs ls",
    "ckptfs find /data/ckpts 'project == bert' --sort eval_loss --limit 5"))
@click.argument("store")
@click.argument("expr", required=False, default="")
@click.option("--sort", "sort_field", metavar="FIELD", help="Order by this field (missing values last).")
@click.option("--desc", is_flag=True, help="Descending order.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N versions.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "paths"]), default="table",
              show_default=True)
@with_store("reader")  # over every project: leaves out those the caller cannot read
def find(s, store, expr, sort_field, desc, limit, fmt):
    """Versions whose sidecar matches EXPR (all versions without one); docs/query.md."""
    from ckptfs.meta.query import QueryError, compile_query, sort_documents, split_field
    try:
        query = compile_query(expr) if expr.strip() else None
    except QueryError as e:
        raise click.UsageError(f"in the expression: {e}") from None
    try:
        split_field(sort_field) if sort_field else None
    except QueryError as e:
        raise click.UsageError(f"in --sort: {e}") from None
    wanted = set(query.fields if query else ()) | ({sort_field} if sort_field else set())
    shown = ["sealed_at", "step"] + sorted(wanted - {"project", "run", "version", "sealed_at", "step"})
    paths = query_paths(wanted) + ([("tags",)] if fmt == "json" else [])
    docs = readable(s, s.catalog_documents(fields=paths))
    if any(split_field(f)[0] == "files" for f in wanted):
        for doc in docs:  # file lists are not in the catalog: only when asked for
            doc["files"] = file_list(s.walk(doc["project"], doc["run"], doc["version"]))[0]
    found = [d for d in docs if query is None or query.matches(d)]
    found.sort(key=lambda d: (d["project"], d["run"], d["version"]))
    if sort_field:
        found = sort_documents(found, sort_field, descending=desc)
    elif desc:
        found.reverse()
    if limit:
        found = found[:limit]
    if fmt == "json":  # whole documents, with the tags computed above
        found = [{**s.catalog_document(d["project"], d["run"], d["version"]),
                  "tags": d["tags"], "aliases": d["aliases"]} for d in found]
    elif fmt == "table":
        s.add_catalog_fields(found, query_paths(shown))
    print_found(found, fmt, shown)


def readable(store, docs: list[dict]) -> list[dict]:
    """The documents of projects the caller may read (all of them unless enforced): a
    search over every project leaves the others out instead of failing."""
    if not store.enforcing():
        return docs
    allowed = set(store.readable_projects(None, {d["project"] for d in docs}))
    return [d for d in docs if d["project"] in allowed]


def query_paths(fields) -> list[tuple]:
    """The catalog paths a query reads. A bare name may be a metric (docs/query.md)."""
    from ckptfs.meta.query import split_field  # lark: only for the commands that query
    paths = []
    for field in fields:
        path = split_field(field)
        paths.append(path)
        if len(path) == 1:
            paths.append(("metrics", path[0]))
    return paths


def print_found(docs: list[dict], fmt: str, fields: list[str]):
    from ckptfs.meta.query import field_value
    if fmt == "paths":
        for doc in docs:
            click.echo(version_path(doc))
    elif fmt == "json":
        click.echo(json.dumps(documents_json(docs), indent=2, ensure_ascii=False))
    else:
        columns = ["path"] + fields
        rows = [[version_path(d)] + [cell(field_value(d, f)) for f in columns[1:]] for d in docs]
        print_table(columns, rows)
        click.echo(f"{len(docs)} version{'s' if len(docs) != 1 else ''}", err=True)


def documents_json(docs: list[dict]) -> list[dict]:
    """Catalog documents as `find --format json` and `log --json` print them: each with
    its mount path first, without the index's sequence number."""
    return [{"path": version_path(d), **{k: v for k, v in d.items() if k != "seq"}} for d in docs]


# -- log -----------------------------------------------------------------------------------
@click.command(epilog=examples(
    "ckptfs log /data/ckpts bert/run-42",
    "ckptfs log /data/ckpts --oneline -n 10",
    "ckptfs log /data/ckpts bert --json | jq -r '.[].path'"))
@click.argument("store")
@click.argument("ref", required=False, default="", metavar="[PROJECT[/RUN]]",
                shell_complete=complete_names(2, every_depth=True))
@click.option("--limit", "-n", type=click.IntRange(min=1), metavar="N", help="At most N versions.")
@click.option("--oneline", is_flag=True, help="One line per version.")
@click.option("--deleted", is_flag=True, help="Deleted versions too, marked as such.")
@json_option("the versions' catalog documents, a list as `find --format json` prints it")
@with_store("reader", "read", project=logged_project, path="ref")
def log(s, store, ref, limit, oneline, deleted, as_json):
    """Sealed versions, newest first (like `git log`)."""
    if oneline and as_json:
        raise click.UsageError("--oneline and --json exclude each other")
    project, run = split_project_run(ref)
    require_known(s, project, run)
    docs = s.catalog_documents(project, run)
    if deleted:
        docs += [s.tombstone_document(t) for t in s.tombstones(project, run)]
    docs = readable(s, docs)
    docs.sort(key=lambda d: d["seq"], reverse=True)
    docs = docs[:limit] if limit else docs
    if as_json:
        return echo_json(documents_json(docs))
    for doc in docs:
        click.echo(log_oneline(doc) if oneline else log_entry(doc))


def log_oneline(doc: dict) -> str:
    tags = f" ({', '.join(doc['tags'])})" if doc.get("tags") else ""
    gone = f" [deleted {doc['deleted_at'][:10]}]" if doc.get("deleted_at") else ""
    return f"{doc['sealed_at'][:19]}Z {doc['project']}/{doc['run']}/{doc['version']}{tags}{gone}"


def log_entry(doc: dict) -> str:
    tags = f"  ({', '.join(doc['tags'])})" if doc.get("tags") else ""
    by = doc.get("sealed_by") or {}
    lines = [click.style(f"version {doc['project']}/{doc['run']}/{doc['version']}", fg="yellow") + tags,
             f"Sealed:   {doc['sealed_at']}" + (f" by {by.get('user') or by.get('uid')}" if by else ""),
             f"Digest:   {doc['digest']}"]
    if doc.get("deleted_at"):
        lines[0] += click.style("  [deleted]", fg="red")
        deletion = doc.get("deletion") or {}
        who = deletion.get("user") or deletion.get("uid")
        how = "by hand" if deletion.get("manual") else "by retention policy"
        lines.append(f"Deleted:  {doc['deleted_at']} by {who}, {how}: {deletion.get('reason')}")
    if doc.get("step") is not None or doc.get("epoch") is not None:
        lines.append(f"Step:     {doc.get('step', '-')}  epoch {doc.get('epoch', '-')}")
    if doc.get("metrics"):
        lines.append("Metrics:  " + "  ".join(f"{k}={cell(v)}" for k, v in doc["metrics"].items()))
    link = parent_of(doc)
    if link:
        lines.append(f"Parent:   {link[0]}" + ("" if link[1] == "previous" else "  (explicit)"))
    lineage = doc.get("lineage") or {}
    code, data = lineage.get("code") or {}, lineage.get("data") or {}
    if code.get("git_commit"):
        lines.append(f"Code:     {code['git_commit'][:12]}" + (f"  {code['repository']}" if code.get("repository") else ""))
    if data:
        lines.append("Data:     " + " ".join(str(data[k]) for k in ("name", "version", "split") if data.get(k)))
    storage = doc.get("storage") or {}
    lines.append(f"Size:     {human_bytes(storage.get('logical_bytes', 0))} logical, "
                 f"{human_bytes(storage.get('new_stored_bytes', 0))} new stored")
    if doc.get("notes"):
        lines.append("")
        lines.extend("    " + line for line in str(doc["notes"]).splitlines())
    return "\n".join(lines) + "\n"


# -- lineage -------------------------------------------------------------------------------
@click.command(epilog=examples(
    "ckptfs lineage /data/ckpts bert/run-42/step-500",
    "ckptfs lineage /data/ckpts bert/run-42/step-500 --format dot | dot -Tsvg > lineage.svg"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION", shell_complete=complete_names(3))
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default="text", show_default=True)
@with_store("reader", "read", project=version_project, path="ref")
def lineage(s, store, ref, fmt):
    """Ancestors and descendants of a version, across runs and projects."""
    graph = lineage_of(s, "/".join(version_ref(s, ref)), can_read=lambda p: s.allowed(None, p, "reader"))
    click.echo(RENDERERS[fmt](graph))


# -- tags and aliases ------------------------------------------------------------------------
@click.command(epilog=examples("ckptfs tag /data/ckpts bert/run-42/step-500 production"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION", shell_complete=complete_names(3))
@click.argument("name")
@with_store("maintainer", checked_by_store=True, project=version_project)
def tag(s, store, ref, name):
    """Point alias NAME (production, staging, …) of the run at VERSION (or at what the
    alias VERSION points at: `tag STORE bert/run-42/best production`)."""
    project, run, version = version_ref(s, ref)
    event = s.set_alias(project, run, name, version)
    if event is None:
        click.echo(f"{project}/{run}/{name} already names {version}")
    elif event["previous"]:
        click.echo(f"{project}/{run}/{name}: {event['previous']} -> {version}")
    else:
        click.echo(f"{project}/{run}/{name} -> {version}")


@click.command(epilog=examples("ckptfs untag /data/ckpts bert/run-42 production"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN", shell_complete=complete_names(2))
@click.argument("name")
@with_store("maintainer", checked_by_store=True, project=run_project)
def untag(s, store, ref, name):
    """Remove alias NAME of a run."""
    project, run = parse_version_ref(ref, parts=2)
    event = s.remove_alias(project, run, name)
    click.echo(f"removed {project}/{run}/{name} (was {event['version']})")


@click.command(epilog=examples(
    "ckptfs tags /data/ckpts bert/run-42",
    "ckptfs tags /data/ckpts bert/run-42 --json | jq -r .aliases.best"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN", shell_complete=complete_names(2))
@json_option('the aliases: {"project", "run", "aliases": {name: version}}')
@with_store("reader", "read", project=run_project, path="ref")
def tags(s, store, ref, as_json):
    """The aliases of a run (latest and best included)."""
    project, run = parse_version_ref(ref, parts=2)
    require_known(s, project, run)
    found = s.aliases(project, run)
    if as_json:
        return echo_json({"project": project, "run": run, "aliases": found})
    for name, version in sorted(found.items()):
        click.echo(f"{name} -> {version}")


# -- project settings ----------------------------------------------------------------------
@click.group(epilog=examples(
    "ckptfs config set /data/ckpts bert primary_metric=eval_loss mode=min",
    "ckptfs config show /data/ckpts bert"))
def config():
    """Project settings: primary_metric, mode (min|max), env_allow (a,b,…),
    unsafe_pickles (warn|refuse), pickle_allow (module.name,module.*,…; a rule admitting
    globals that run code needs --force). PROJECT `*` sets defaults for every project."""


def parse_setting(assignment: str) -> tuple[str, object]:
    name, sep, value = assignment.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {assignment!r}")
    if name in ("env_allow", "pickle_allow"):
        return name, [v.strip() for v in value.split(",") if v.strip()]
    return name, value


@config.command("set", epilog=examples(
    "ckptfs config set /data/ckpts bert primary_metric=eval_loss mode=min",
    "ckptfs config set /data/ckpts '*' unsafe_pickles=refuse"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
@click.option("--force", is_flag=True,
              help="Accept a pickle_allow rule that admits globals able to run code.")
@with_store("maintainer", checked_by_store=True, project=settings_project)
def config_set(s, store, project, assignments, force):
    """Set settings of PROJECT, e.g. `primary_metric=eval_loss mode=min`."""
    echo_json(s.update_project_settings(project, changes_of(assignments, force)))


def changes_of(assignments, force: bool) -> dict:
    changes = dict(parse_setting(a) for a in assignments)
    if "pickle_allow" in changes:
        from ckptfs.meta.scan import AllowRuleRefused, check_allow_rules
        try:
            check_allow_rules(changes["pickle_allow"], force)
        except AllowRuleRefused as e:
            raise SettingError(str(e)) from None
    return changes


@config.command("unset", epilog=examples("ckptfs config unset /data/ckpts bert env_allow"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@click.argument("names", nargs=-1, required=True)
@with_store("maintainer", checked_by_store=True, project=settings_project)
def config_unset(s, store, project, names):
    """Remove settings of PROJECT."""
    echo_json(s.update_project_settings(project, {}, unset=names))


@config.command("show", epilog=examples("ckptfs config show /data/ckpts bert"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@with_store("reader", "read settings", project=settings_project)
def config_show(s, store, project):
    """Settings in force for PROJECT (its own over those of `*`)."""
    echo_json(s.project_settings(project))


# -- project schema ------------------------------------------------------------------------
@click.group(epilog=examples(
    "ckptfs schema set /data/ckpts bert schema.json",
    "ckptfs schema show /data/ckpts bert"))
def schema():
    """The JSON Schema every new version of a project must satisfy."""


@schema.command("set", epilog=examples("ckptfs schema set /data/ckpts bert schema.json"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@click.argument("schema_file", type=click.File("rb"), metavar="SCHEMA.json")
@with_store("maintainer", checked_by_store=True, project=settings_project)
def schema_set(s, store, project, schema_file):
    """Attach SCHEMA.json (`-`: stdin) to PROJECT; checked at every seal from now on."""
    s.set_project_schema(project, read_schema(schema_file))
    click.echo(f"schema of {project} set: new versions are validated against it at seal")


def read_schema(schema_file) -> dict:
    """The JSON Schema in SCHEMA.json, checked to be one."""
    try:
        doc = json.loads(schema_file.read())
    except ValueError as e:
        raise SettingError(f"{schema_file.name} is not valid JSON: {e}") from None
    except RecursionError:
        raise SettingError(f"{schema_file.name} is nested too deeply to be a schema") from None
    from ckptfs.meta.schema import (
        check_schema,  # jsonschema: only when needed (start-up time)
    )
    check_schema(doc)
    return doc


@schema.command("show", epilog=examples("ckptfs schema show /data/ckpts bert"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@with_store("reader", "read settings", project=settings_project)
def schema_show(s, store, project):
    """Print the schema in force for PROJECT."""
    own, found = s.project_schema(project, inherited=False), s.project_schema(project)
    if found is None:
        raise SettingError(f"project {project} has no schema")
    if own is None:
        click.echo(f"# inherited from project {EVERY_PROJECT}", err=True)
    click.echo(json.dumps(found, indent=2))


@schema.command("clear", epilog=examples("ckptfs schema clear /data/ckpts bert"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@with_store("maintainer", checked_by_store=True, project=settings_project)
def schema_clear(s, store, project):
    """Remove PROJECT's own schema."""
    if s.project_schema(project, inherited=False) is None:
        raise SettingError(f"project {project} has no schema of its own")
    s.set_project_schema(project, None)
    click.echo(f"schema of {project} cleared")


COMMANDS = (show, find, log, lineage, tag, untag, tags, config, schema)
