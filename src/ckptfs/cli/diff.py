"""`ckptfs diff`: what changed between two versions, in sections a person reads top to
bottom (files, metrics, hyperparameters, environment, lineage), or the whole comparison
as JSON. The comparison itself is `ckptfs.meta.diff.diff_versions`, the one the web
dashboard's diff page shows."""
import click

from ckptfs.cli._common import (
    cell,
    complete_names,
    echo_json,
    examples,
    human_bytes,
    json_option,
    table_lines,
    with_store,
)

SHORT_SHA = 12  # enough to tell two files apart at a glance; --json has the whole hash


@click.command(epilog=examples(
    "ckptfs diff /data/ckpts bert/run-42/step-500 bert/run-42/step-1000",
    "ckptfs diff /data/ckpts bert/run-42/production bert/run-42/latest",
    "ckptfs diff /data/ckpts bert/run-42/best bert-ft/sst2/latest --json | jq .metrics"))
@click.argument("store")
@click.argument("a", metavar="A", shell_complete=complete_names(3))
@click.argument("b", metavar="B", shell_complete=complete_names(3))
@json_option("the comparison (its fields: docs/cli.md, \"ckptfs diff\")")
@with_store("reader", checked_by_store=True)  # diff_versions checks both projects
def diff(s, store, a, b, as_json):
    """Compare version A with version B (each PROJECT/RUN/VERSION, or an alias of the
    run: latest, best, production…), in any runs or projects: files added, removed and
    changed (by SHA-256), every metric with its change, the hyperparameters and
    environment that differ, and how the two are related."""
    from ckptfs.meta.diff import diff_versions
    result = diff_versions(s, a, b)
    if as_json:
        echo_json(result)
        return
    click.echo("\n\n".join([heading(result), files_section(result["files"]),
                            metrics_section(result["metrics"]),
                            settings_section("Hyperparameters", result["hyperparameters"]),
                            settings_section("Environment", result["environment"]),
                            lineage_section(result)]))


def heading(result: dict) -> str:
    return f"A: {describe_side(result['a'])}\nB: {describe_side(result['b'])}"


def describe_side(side: dict) -> str:
    step = f"step {side['step']}, " if side.get("step") is not None else ""
    return f"{side['key']}  ({step}sealed {cell(side['sealed_at'])})"


def files_section(files: dict) -> str:
    title = (click.style("Files", bold=True) + f": {len(files['added'])} added, "
             f"{len(files['removed'])} removed, {len(files['changed'])} changed, "
             f"{files['unchanged']} unchanged")
    rows = [["+", f["path"], human_bytes(f["size"]), short(f["sha256"])] for f in files["added"]]
    rows += [["-", f["path"], human_bytes(f["size"]), short(f["sha256"])] for f in files["removed"]]
    rows += [["~", f["path"], f"{human_bytes(f['a']['size'])} -> {human_bytes(f['b']['size'])}",
              f"{short(f['a']['sha256'])} -> {short(f['b']['sha256'])}"] for f in files["changed"]]
    if not rows:
        return title
    lines = table_lines(["", "path", "size", "sha256"], rows)
    colours = [None] + [FILE_COLOURS[row[0]] for row in rows]
    return "\n".join([title] + [click.style("  " + line, fg=colour)
                                 for line, colour in zip(lines, colours)])


FILE_COLOURS = {"+": "green", "-": "red", "~": "yellow"}


def short(sha256: str | None) -> str:
    return (sha256 or "-")[:SHORT_SHA]


def metrics_section(metrics: list[dict]) -> str:
    if not metrics:
        return click.style("Metrics", bold=True) + ": none on either side"
    rows = [[m["name"], cell(m["a"]), cell(m["b"]), signed(m)] for m in metrics]
    return click.style("Metrics", bold=True) + ":\n" + table(["name", "A", "B", "change"], rows)


def signed(metric: dict) -> str:
    from ckptfs.meta.diff import change_text
    delta = metric["delta"]
    return "-" if delta is None else change_text(delta, metric["a"], metric["b"])


def settings_section(title: str, changes: list[dict]) -> str:
    if not changes:
        return click.style(title, bold=True) + ": the same"
    rows = [[c["key"], cell(c["a"]), cell(c["b"])] for c in changes]
    counted = "1 key differs" if len(changes) == 1 else f"{len(changes)} keys differ"
    return (click.style(title, bold=True) + f": {counted}\n"
            + table(["key", "A", "B"], rows))


def table(header: list[str], rows: list[list[str]]) -> str:
    """A table indented under its section's title."""
    return "\n".join("  " + line for line in table_lines(header, rows))


def lineage_section(result: dict) -> str:
    lineage, a, b = result["lineage"], result["a"]["key"], result["b"]["key"]
    lines = [click.style("Lineage", bold=True) + ":",
             f"  parent of A: {lineage['a_parent'] or 'none'}",
             f"  parent of B: {lineage['b_parent'] or 'none'}"]
    if a == b:
        lines.append("  A and B are the same version")
    elif lineage["b_descends_from_a"]:
        lines.append(f"  B descends from A ({b} <- … <- {a})"
                     if lineage["b_parent"] != a else "  B descends from A (A is its parent)")
    elif lineage["a_descends_from_b"]:
        lines.append(f"  A descends from B ({a} <- … <- {b})"
                     if lineage["a_parent"] != b else "  A descends from B (B is its parent)")
    else:
        lines.append("  neither descends from the other")
    return "\n".join(lines)


COMMANDS = (diff,)
