"""The lineage graph's layered layout (ckptfs.web.graph.layout): columns by longest
path, rows by barycentre; readable for a long run and for 500 versions of many runs."""
import random

import pytest

pytest.importorskip("flask")  # ckptfs.web is the web extra's

from ckptfs.web.graph import COLUMN_WIDTH, layout  # noqa: E402


def chain(run: str, count: int, start: str | None = None) -> tuple[list[str], list[tuple]]:
    nodes = [f"p/{run}/v{i}" for i in range(count)]
    edges = [(a, b, "previous") for a, b in zip(nodes, nodes[1:])]
    if start:
        edges.insert(0, (start, nodes[0], "explicit"))
    return nodes, edges


def test_a_run_is_one_row_left_to_right():
    nodes, edges = chain("r", 3000)  # deeper than Python's recursion limit
    places = layout(nodes, edges)
    assert {y for _, y in places.values()} == {places[nodes[0]][1]}
    xs = [places[n][0] for n in nodes]
    assert all(b - a == COLUMN_WIDTH for a, b in zip(xs, xs[1:]))


def test_a_fork_gets_a_row_of_its_own_and_starts_after_its_parent():
    base, base_edges = chain("base", 5)
    fork, fork_edges = chain("fork", 3, start=base[2])
    places = layout(base + fork, base_edges + fork_edges)
    assert len({places[n][1] for n in base}) == 1 and len({places[n][1] for n in fork}) == 1
    assert places[fork[0]][1] != places[base[0]][1]
    assert places[fork[0]][0] == places[base[3]][0]  # one column right of its parent


def test_a_cycle_of_explicit_parents_is_cut_not_followed():
    nodes = ["p/a/v1", "p/b/v1"]
    places = layout(nodes, [("p/a/v1", "p/b/v1", "explicit"), ("p/b/v1", "p/a/v1", "explicit")])
    assert len(set(places.values())) == 2


def test_500_versions_of_many_runs_each_get_their_own_place_and_every_edge_runs_right():
    rng = random.Random(7)
    nodes, edges = chain("run-0", 25)
    for number in range(1, 20):  # each run forks from a version of an earlier run
        parent = rng.choice(nodes)
        more, more_edges = chain(f"run-{number}", 25, start=parent)
        nodes += more
        edges += more_edges
    places = layout(nodes, edges)
    assert len(nodes) == 500 and len(set(places.values())) == 500
    assert all(places[a][0] < places[b][0] for a, b, _ in edges)
    # Rows stay few: a run's versions share one, so there are no more rows than runs.
    assert len({y for _, y in places.values()}) <= 20


def test_columns_widen_so_long_version_names_do_not_overlap():
    from ckptfs.web.graph import CHARACTER_WIDTH, column_width_for, label_of
    labels = [label_of(f"checkpoint-{step}") for step in (5, 10, 12000)]
    width = column_width_for(labels)
    assert width >= len("checkpoint-12000") * CHARACTER_WIDTH + 8
    nodes, edges = chain("r", 3)
    xs = [x for x, _ in layout(nodes, edges, width).values()]
    assert xs[1] - xs[0] == width
    assert column_width_for(["v1", "v2"]) == COLUMN_WIDTH  # short names keep the narrow grid
    cut = label_of("x" * 100)
    assert len(cut) == 24 and cut.endswith("…")
