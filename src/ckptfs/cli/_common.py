"""What every topic module of the `ckptfs` command shares: opening a store for a command
and checking the caller's role (`with_store`), the one-line error (`fail`), and the output
helpers (sizes, tables, JSON, progress bars).

Topic modules import this module and the layers below (store, meta, fs), never the group
(`ckptfs.cli.app`) nor each other. The store engine is imported when a command opens a
store, not when the command line is parsed: `ckptfs --help` stays fast.
"""
import functools
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import click

EXIT_ERROR = 1
EXIT_DAMAGE = 3

ROLES = ("reader", "writer", "maintainer", "admin")  # ckptfs.store.access.ROLES, by rank
EVERY_PROJECT = "*"  # a role on `*` counts for every project (docs/access.md)


def fail(message: str, code: int = EXIT_ERROR):
    click.echo(f"ckptfs: error: {message}", err=True)
    sys.exit(code)


def open_store(path: str, for_rebuild: bool = False):
    from ckptfs.store import Store  # the engine: loaded once a command needs it
    return Store.open(path, for_rebuild=for_rebuild)


# -- a command's store and role ---------------------------------------------------------------
@dataclass(frozen=True)
class StoreAccess:
    """What a command does to a store, declared once by `with_store`.

    `role` is what the command does, as a role: a reader reads, a writer archives, a
    maintainer changes the catalog, an admin changes access. `project` names the
    project the command works on: a function of the command's parameters (which checks
    the argument, and gives None when the command names no project), or `*`. Where the
    role is checked:
    - `checked_by_store`: by the Store method the command calls (`grant`, `set_alias`,
      `delete_version`, …), once, with its own words;
    - else here, on the project, with `operation` as the words of a refusal and the
      parameter `path` as its path;
    - when the command names no project, nowhere: it shows only what the caller may
      read (`readable_projects`, `entry_visible`) or no project's content (stats).
    """
    role: str
    operation: str | None = None
    project: Callable[..., str | None] | str | None = None
    path: str | None = None
    checked_by_store: bool = False

    def project_of(self, params: dict) -> str | None:
        """The project this call works on (None: it names none)."""
        if self.project is None or isinstance(self.project, str):
            return self.project
        return self.project(**params)

    def check(self, store, params: dict, project: str | None):
        """Raise AccessDeniedError (journaled) unless the caller has the role, where it
        is this decorator's to check."""
        if project is not None and not self.checked_by_store:
            store.authorize(None, project, self.role, self.operation,
                            params[self.path] if self.path else None)


def with_store(role: str, operation: str | None = None, *, project=None, path: str | None = None,
               checked_by_store: bool = False, store: str | Callable[..., str] = "store",
               for_rebuild: bool = False):
    """Open the command's store, check the caller's role (see StoreAccess), run the
    command with the open store as its first argument, and close the store. `store` is
    the parameter holding the store's path (or a function of the parameters giving it).
    The command's arguments are parsed (`project`, `store`) before the store opens, so a
    malformed one is the error reported first."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if project is not None and operation is None and not checked_by_store:
        raise ValueError("a command that checks a project's role needs the words of a refusal")
    access = StoreAccess(role, operation, project, path, checked_by_store)

    def decorate(command):
        @functools.wraps(command)
        def run(**params):
            project = access.project_of(params)
            store_path = params[store] if isinstance(store, str) else store(**params)
            with open_store(store_path, for_rebuild) as s:
                access.check(s, params, project)
                return command(s, **params)
        run.store_access = access
        return run
    return decorate


def with_two_stores(role: str, source: str, dest: str):
    """`with_store` for a command between two stores (`copy`): open the stores named by
    the parameters `source` and `dest` (refused if they are one), run the command with
    both (source first), and close them. Its projects are known only once it has looked
    into the source, so the command checks the roles itself, reader in the source and
    `role` in the destination, through each store's `authorize` (journaled there)."""
    access = StoreAccess(role, checked_by_store=True)

    def decorate(command):
        @functools.wraps(command)
        def run(**params):
            if same_store(params[source], params[dest]):
                fail(f"{source.upper()} and {dest.upper()} are the same store "
                     f"({params[source]})")
            with open_store(params[source]) as src, open_store(params[dest]) as dst:
                return command(src, dst, **params)
        run.store_access = access
        return run
    return decorate


def same_store(a: str, b: str) -> bool:
    """Do two STORE arguments name one store (a directory by any path, a URL with or
    without its trailing slash)? Checked before opening: one process must not open a
    store's index twice."""
    from ckptfs.store.location import is_object_store

    def canonical(store: str) -> str:
        return store.rstrip("/") if is_object_store(store) else os.path.realpath(store)
    return canonical(a) == canonical(b)


# -- completing names from the store ----------------------------------------------------------
def complete_names(depth: int, paths: bool = False, every_depth: bool = False):
    """A click `shell_complete` callback for an argument naming what is in the store:
    PROJECT (depth 1), PROJECT/RUN (2), PROJECT/RUN/VERSION (3, aliases included), and
    with `paths` the files of the version after it. It offers whole names, as a shell
    offers file names, so the shell extends the common prefix (`bert/run-42/step-`) and
    adds a space only after a complete one; `every_depth` offers the shorter names too
    (`[PROJECT[/RUN]]`). It reads only a local store the caller may read, and offers
    nothing rather than fail (a completion must never print an error)."""
    def complete(ctx, param, incomplete: str) -> list[str]:
        store = ctx.params.get("store") or os.environ.get("CKPTFS_STORE")
        if not store or "://" in store or not os.path.isfile(os.path.join(store, "ckptfs.toml")):
            return []
        try:
            with open_store(store) as s:
                names = names_under(s, incomplete, depth, paths, every_depth)
        except Exception:  # noqa: BLE001 - a completion offers nothing rather than fail
            return []
        return sorted(n for n in names if n.startswith(incomplete))
    return complete


def names_under(s, typed: str, depth: int, paths: bool, every_depth: bool) -> list[str]:
    """The names `complete_names` offers, read only as deep as `typed` has gone."""
    pieces = typed.split("/")
    projects = s.readable_projects(None, s.projects())
    if len(pieces) > 1:
        projects = [p for p in projects if p == pieces[0]]
    names = list(projects) if depth == 1 or every_depth else []
    for project in projects if depth >= 2 else ():
        runs = s.runs(project)
        if len(pieces) > 2:
            runs = [r for r in runs if r == pieces[1]]
        names += [f"{project}/{r}" for r in runs] if depth == 2 or every_depth else []
        for run in runs if depth >= 3 else ():
            names += version_names(s, project, run, typed, paths)
    return names


def version_names(s, project: str, run: str, typed: str, paths: bool) -> list[str]:
    """PROJECT/RUN/VERSION (or ALIAS) that fit `typed`; with `paths`, the files of the
    one version left (PROJECT/RUN/VERSION/PATH), else each version followed by `/`."""
    aliases = s.aliases(project, run)
    names = sorted({v["version"] for v in s.versions(project, run)} | set(aliases))
    prefix = f"{project}/{run}/"
    fitting = [v for v in names
               if (prefix + v).startswith(typed) or typed.startswith(prefix + v + "/")]
    if not paths:
        return [prefix + v for v in fitting]
    if len(fitting) != 1:
        return [prefix + v + "/" for v in fitting]
    name = fitting[0]
    version = s.named_version(project, run, name)
    return [f"{prefix}{name}/{e['path']}" for e in s.walk(project, run, version)
            if e["type"] == "file"]


# -- arguments ------------------------------------------------------------------------------
class Seconds(click.ParamType):
    """A duration in seconds: a finite number, 0 or more (float() takes 'nan', '-5')."""
    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} must be a finite number of seconds, 0 or more", param, ctx)
        return seconds


SECONDS = Seconds()


def version_project(ref: str, **_) -> str:
    """The project of a PROJECT/RUN/VERSION argument `ref` (checked whole; VERSION may be
    an alias: Store.named_version)."""
    from ckptfs.meta.diff import split_ref
    return split_ref(ref)[0]


def version_ref(s, ref: str) -> tuple[str, str, str]:
    """(project, run, version) of a PROJECT/RUN/VERSION argument whose VERSION may be an
    alias: `ckptfs get STORE bert/run-42/best DEST` restores what `best` points at."""
    from ckptfs.meta.diff import split_ref
    project, run, name = split_ref(ref)
    # Neither a version nor an alias: NAME itself, for the command's own lookup to say
    # why (deleted, or not there).
    return project, run, s.named_version(project, run, name) or name


def run_project(ref: str, **_) -> str:
    """The project of a PROJECT/RUN argument `ref` (checked whole)."""
    from ckptfs.store.names import parse_version_ref
    return parse_version_ref(ref, parts=2)[0]


def settings_project(project: str, **_) -> str:
    """A PROJECT argument of the settings commands: a project's name, or `*`."""
    check_settings_project(project)
    return project


def check_settings_project(project: str):
    if project != EVERY_PROJECT:
        from ckptfs.store.names import validate_name
        validate_name(project, "project")


def load_public_keys(paths) -> list | None:
    if not paths:
        return None
    from ckptfs.store.ed25519 import load_public_key
    return [load_public_key(path) for path in paths]


def parse_date(text: str):
    """A date or ISO 8601 moment given by the user; UTC unless it says otherwise."""
    from datetime import datetime, timezone
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (YYYY-MM-DD or ISO 8601)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def examples(*command_lines: str) -> str:
    """A command's epilog: its examples, one invocation a line, kept as written (`\\b`
    stops click rewrapping them)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in command_lines)


# -- output ---------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def print_table(header: list[str], rows: list[list[str]]):
    for line in table_lines(header, rows):
        click.echo(line)


def table_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a table: columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
            for row in [header] + rows]


def cell(value) -> str:
    """A value in a table: numbers short, nothing as `-`, lists and dicts as JSON, a
    timestamp to the second."""
    from ckptfs.meta.query import MISSING
    if value is MISSING or value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text[:19] + "Z" if len(text) > 20 and text[4:5] == "-" and text.endswith("Z") else text


def echo_json(value):
    """A document for people and `jq`: indented, keys sorted."""
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def json_option(what: str):
    """The `--json` flag of a command (parameter `as_json`): print `what` as one JSON
    document (echo_json) instead of text. docs/cli.md lists each command's fields."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def progress_bar(**options):
    """A tqdm bar on stderr (tqdm is imported here: most commands never draw one, and
    `find` must start fast)."""
    from tqdm import tqdm
    return tqdm(file=sys.stderr, **options)
