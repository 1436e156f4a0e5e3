"""The dashboard in a real browser: `ckptfs serve` as a process of its own on a free
loopback port, headless chromium driven by selenium, the demo store of
tests/helpers/web.py (three runs of nlp, a fork across runs, a fine-tune across
projects, a tag, a project nobody may read)."""
import html
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from tests.helpers.access import journal
from tests.helpers.web import TAGGED, VERSIONS, console_errors, expected_edges

PAGES = ["/", "/p/nlp", "/p/nlp/base", "/p/nlp/base?compare=sweep-lr",
         "/p/nlp/base?q=step+%3E%3D+300", "/p/nlp/base/step-300", "/p/vision/ft/v1",
         "/lineage", "/lineage?focus=nlp/base/step-300", "/lineage?project=vision",
         "/diff", "/diff?a=nlp/base/step-400&b=nlp/base/step-500", "/storage", "/health",
         "/health?project=nlp&event=version."]


def versions_of(project, run):
    return [v for p, r, v, *_ in VERSIONS if (p, r) == (project, run)]


def open_page(browser, address, path):
    browser.get(address + path)
    return browser.find_element(By.TAG_NAME, "h1").text


def test_every_page_loads_without_console_errors(server, browser):
    browser.get_log("browser")  # what came before
    for path in PAGES:
        heading = open_page(browser, server, path)
        assert heading and not heading.startswith(("4", "5")), (path, heading)
        assert console_errors(browser) == [], path
    # The script ran: a click on a header sorts the table.
    open_page(browser, server, "/p/nlp/base")
    step_header = browser.find_element(By.XPATH, "//table[@id='versions']//th[text()='step']")
    step_header.click()
    step_header.click()  # descending
    rows = browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
    assert [r.get_attribute("data-version") for r in rows] == list(reversed(versions_of("nlp", "base")))
    assert console_errors(browser) == []


def chart_points(browser, metric):
    figure = browser.find_element(By.CSS_SELECTOR, f"figure.chart[data-metric='{metric}']")
    return figure.find_elements(By.CSS_SELECTOR, "circle.point")


def test_the_run_page_charts_one_point_per_checkpoint(server, browser):
    open_page(browser, server, "/p/nlp/base")
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart")
    assert sorted(c.get_attribute("data-metric") for c in charts) == ["accuracy", "eval_loss", "loss"]
    for metric in ("accuracy", "eval_loss", "loss"):
        points = chart_points(browser, metric)
        assert [(p.get_attribute("data-version"), p.get_attribute("data-step")) for p in points] == \
            [(v, str(step)) for p, r, v, step, *_ in VERSIONS if (p, r) == ("nlp", "base")]
    values = {p.get_attribute("data-version"): float(p.get_attribute("data-value"))
              for p in chart_points(browser, "eval_loss")}
    assert values == {v: m["eval_loss"] for p, r, v, _, m, _ in VERSIONS if (p, r) == ("nlp", "base")}
    # The best checkpoint (lowest eval_loss: step-400) is marked, and named at the top.
    assert [p.get_attribute("data-version") for p in chart_points(browser, "eval_loss")
            if "best" in p.get_attribute("class")] == ["step-400"]
    assert "best step-400" in browser.find_element(By.ID, "run-aliases").text

    # A sibling run overlaid: its own line, a point per checkpoint of it.
    open_page(browser, server, "/p/nlp/base?compare=sweep-lr")
    by_run = {}
    for point in chart_points(browser, "loss"):
        by_run.setdefault(point.get_attribute("data-run"), []).append(point.get_attribute("data-version"))
    assert by_run == {"base": versions_of("nlp", "base"), "sweep-lr": versions_of("nlp", "sweep-lr")}

    # Filtered with the find language: the table and the chart keep what matches.
    open_page(browser, server, "/p/nlp/base?q=step+%3E%3D+300+and+eval_loss+%3C+1")
    rows = browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
    assert [r.get_attribute("data-version") for r in rows] == ["step-300", "step-400", "step-500"]
    assert len(chart_points(browser, "loss")) == 3


def test_a_bad_filter_says_what_is_wrong(server, browser):
    open_page(browser, server, "/p/nlp/base?q=eval_loss+%3C")
    assert "expected a value after '<'" in browser.find_element(By.ID, "query-error").text
    # The page's status is 400 (the browser logs that); no script failed on it.
    assert [e["source"] for e in console_errors(browser)] == ["network"]


def test_the_lineage_graph_has_every_node_and_edge(server, browser):
    open_page(browser, server, "/lineage")
    nodes = browser.find_elements(By.CSS_SELECTOR, "#lineage-graph g.node")
    assert sorted(n.get_attribute("data-ref") for n in nodes) == \
        sorted(f"{p}/{r}/{v}" for p, r, v, *_ in VERSIONS)
    edges = browser.find_elements(By.CSS_SELECTOR, "#lineage-graph path.edge")
    found = {(e.get_attribute("data-from"), e.get_attribute("data-to")) for e in edges}
    assert found == expected_edges() and len(edges) == len(found)
    kinds = {(e.get_attribute("data-from"), e.get_attribute("data-to")): e.get_attribute("data-kind")
             for e in edges}
    assert kinds[("nlp/base/step-300", "nlp/sweep-lr/step-400")] == "explicit"
    assert kinds[("nlp/base/step-500", "vision/ft/v1")] == "explicit"
    assert kinds[("nlp/sweep-lr/step-600", "vision/ft/v2")] == "input"  # read before writing
    assert kinds[("vision/ft/v1", "vision/ft/v2")] == "previous"
    # A run's chain stays on one row, left to right.
    ys = {float(n.get_attribute("transform").split(",")[1].rstrip(")")) for n in nodes
          if n.get_attribute("data-ref").startswith("nlp/base/")}
    assert len(ys) == 1
    # Every node is a link to its version page.
    browser.find_element(By.CSS_SELECTOR, "g.node[data-ref='nlp/sweep-lr/step-500'] circle").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "step-500"
    assert browser.current_url.endswith("/p/nlp/sweep-lr/step-500")

    # Around one version: its ancestors and descendants only.
    open_page(browser, server, "/lineage?focus=nlp/sweep-lr/step-400")
    refs = {n.get_attribute("data-ref")
            for n in browser.find_elements(By.CSS_SELECTOR, "#lineage-graph g.node")}
    assert refs == {"nlp/base/step-100", "nlp/base/step-200", "nlp/base/step-300",
                    "nlp/sweep-lr/step-400", "nlp/sweep-lr/step-500", "nlp/sweep-lr/step-600"}


def test_the_diff_page_shows_the_changed_metric(server, browser):
    # From the version page, as a user finds it: "diff to the previous checkpoint".
    open_page(browser, server, "/p/nlp/base/step-500")
    browser.find_element(By.ID, "diff-previous").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Compare two versions"
    metrics = {v: m for p, r, v, _, m, _ in VERSIONS if (p, r) == ("nlp", "base")}
    row = browser.find_element(By.CSS_SELECTOR, "#diff-metrics tr[data-metric='eval_loss']")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    a, b = metrics["step-400"]["eval_loss"], metrics["step-500"]["eval_loss"]
    assert cells[:3] == ["eval_loss", f"{a:.6g}", f"{b:.6g}"]
    assert float(cells[3]) == pytest.approx(b - a) and "changed" in row.get_attribute("class")
    files = browser.find_element(By.ID, "diff-files").text
    assert "model.bin" in files and "ckptfs.json" in files


def test_the_version_page_renders_the_sidecar(server, browser):
    project, run, alias, version = TAGGED
    open_page(browser, server, f"/p/{project}/{run}/{alias}")  # an alias: its version
    assert browser.current_url.endswith(f"/p/{project}/{run}/{version}")
    heading = browser.find_element(By.TAG_NAME, "h1").text
    assert heading.split()[0] == version and "production" in heading and "best" in heading
    assert "eval_loss" in browser.find_element(By.ID, "metrics").text
    assert "nlp/base/step-300 (previous)" in browser.find_element(By.ID, "lineage").text
    assert "learning_rate" in browser.find_element(By.ID, "hyperparameters").text
    files = browser.find_element(By.ID, "files").text
    assert "model.bin" in files and "ckptfs get" in files
    assert browser.find_element(By.ID, "signature").text == "not signed"
    open_page(browser, server, "/p/vision/ft/v2")
    assert "inputs read\nnlp/sweep-lr/step-600\n" in browser.find_element(By.ID, "lineage").text


def page_source(address, path) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(address + path) as response:
            return response.status, html.unescape(response.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, html.unescape(e.read().decode())


def test_a_user_without_a_role_sees_nothing_of_that_project(demo_store, server, nobody_server,
                                                             browser):
    refused_before = [e for e in journal(demo_store.path) if e["type"] == "access.refused"]
    # Root (admin of every project) sees secret; nobody sees nlp and vision only.
    assert "secret" in page_source(server, "/")[1]
    open_page(browser, nobody_server, "/")
    shown = [s.get_attribute("data-project") for s in browser.find_elements(By.CSS_SELECTOR, "section.project")]
    assert shown == ["nlp", "vision"]
    for path in ["/", "/lineage", "/storage", "/health", "/diff", "/p/nlp/base",
                 "/health?project=secret", "/metrics"]:
        status, text = page_source(nobody_server, path)
        assert status in (200, 404) and "secret" not in text and "hidden-run" not in text, path
    open_page(browser, nobody_server, "/lineage")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#lineage-graph g.node")) == len(VERSIONS) - 1
    assert console_errors(browser) == []
    # Its URLs answer as if it did not exist: 404, the words of a project that is not there.
    missing = page_source(nobody_server, "/p/no-such-project")
    assert missing[0] == 404 and "no project 'no-such-project' in the store" in missing[1]
    for path in ["/p/secret", "/p/secret/hidden-run", "/p/secret/hidden-run/s1",
                 "/p/secret/hidden-run/latest", "/lineage?focus=secret/hidden-run/s1",
                 "/lineage?project=secret"]:
        status, text = page_source(nobody_server, path)
        assert status == 404 and "no project 'secret' in the store" in text, path
        assert "hidden-run" not in text and "s1" not in text.split("<main>")[1], path
    # The diff page says it on its form, which keeps what was typed (and nothing more).
    status, text = page_source(nobody_server, "/diff?a=secret/hidden-run/s1&b=nlp/base/step-100")
    assert status == 404 and "no project 'secret' in the store" in text
    assert "hidden-run" not in text.replace('value="secret/hidden-run/s1"', "")
    assert 'id="diff-metrics"' not in text
    # Looking is not a refusal: nothing was journaled (the server changes nothing).
    assert [e for e in journal(demo_store.path) if e["type"] == "access.refused"] == refused_before


def test_the_health_page_filters_the_audit_log(server, browser):
    open_page(browser, server, "/health?project=nlp&event=version.sealed")
    rows = browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    assert [r.get_attribute("data-type") for r in rows] == ["version.sealed"] * 8
    assert rows[0].find_elements(By.TAG_NAME, "td")[4].text == "nlp/sweep-lr/step-600"  # newest first
    open_page(browser, server, "/health?event=access.&user=root")
    types = {r.get_attribute("data-type") for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")}
    assert types == {"access.granted", "access.enforcement"}
    bars = browser.find_elements(By.CSS_SELECTOR, "#sealed-per-hour rect.bar")
    assert len(bars) == 48 and sum(int(b.get_attribute("data-versions")) for b in bars) == len(VERSIONS)
