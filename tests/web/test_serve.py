"""`ckptfs serve` as a user runs it (a real process on a free loopback port): where it
may listen, the token, the one-line errors; and routes through Flask's test client
against a real store (a deleted version, aliases, bad input)."""
import http.client
import json
import os
import socket
from urllib.parse import urlsplit

import pytest

from ckptfs.store import Store
from tests.helpers.cli import run_cli_checked
from tests.helpers.web import build_store, serving

pytest.importorskip("flask")
pytest.importorskip("waitress")


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory):
    """The demo store, roles not enforced."""
    return build_store(str(tmp_path_factory.mktemp("web") / "store"), enforce=False).path


def request(address: str, path: str, headers=None) -> http.client.HTTPResponse:
    where = urlsplit(address)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read().decode()
    connection.close()
    return response


def test_beyond_loopback_only_with_a_token(plain_store):
    for bind in ("0.0.0.0", "::", "192.0.2.7", "example.org"):
        error = run_cli_checked("serve", plain_store, "--bind", bind, rc=1).stderr.decode()
        assert error == (f"ckptfs: error: serving on {bind} (beyond this machine) needs --token "
                         "TOKEN (or CKPTFS_WEB_TOKEN); behind a reverse proxy that "
                         "authenticates, bind 127.0.0.1\n")


def test_errors_are_one_line(plain_store, tmp_path):
    error = run_cli_checked("serve", str(tmp_path / "nothing"), rc=1).stderr.decode()
    assert error.startswith("ckptfs: error: ") and error.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = run_cli_checked("serve", plain_store, "--port", port, rc=1).stderr.decode()
    assert error == f"ckptfs: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_without_the_web_extra_it_says_what_to_install(plain_store, tmp_path):
    # A waitress that cannot be imported, first on the path: as if it were not installed.
    os.makedirs(tmp_path / "hide" / "waitress")
    (tmp_path / "hide" / "waitress" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'waitress'\", name='waitress')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'hide'}:{os.environ.get('PYTHONPATH', '')}"}
    error = run_cli_checked("serve", plain_store, rc=1, env=env).stderr.decode()
    assert error == ("ckptfs: error: ckptfs serve needs the web extra (waitress is not "
                     "installed): pip install 'ckptfs[web]'\n")


def test_with_a_token_every_request_carries_it(plain_store):
    with serving(plain_store, "--token", "s3cret-token") as address:
        refused = request(address, "/p/nlp/base")
        assert refused.status == 401 and "nlp" not in refused.body.split("<main>")[1]
        assert refused.getheader("WWW-Authenticate") == "Bearer"
        assert request(address, "/metrics").status == 401
        assert request(address, "/", {"Authorization": "Bearer wrong"}).status == 401
        assert request(address, "/p/nlp/base", {"Authorization": "Bearer s3cret-token"}).status == 200
        # A browser: ?token= once, then the cookie; the token leaves the address.
        first = request(address, "/p/nlp/base?q=step+%3E+100&token=s3cret-token")
        assert first.status == 302 and first.getheader("Location") == "/p/nlp/base?q=step+%3E+100"
        cookie = first.getheader("Set-Cookie")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret-token" not in cookie
        again = request(address, "/p/nlp/base", {"Cookie": cookie.split(";")[0]})
        assert again.status == 200 and "step-300" in again.body
        assert request(address, "/", {"Cookie": "ckptfs_session=forged"}).status == 401
        # Prometheus scrapes with the bearer token (docs/monitoring.md).
        scraped = request(address, "/metrics", {"Authorization": "Bearer s3cret-token"})
        assert scraped.status == 200
        assert scraped.getheader("Content-Type").startswith("text/plain; version=0.0.4")
        assert 'ckptfs_versions{project="nlp"} 8.0' in scraped.body.splitlines()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The application over the demo store with an alias `keep` -> vision/ft/v1 and one
    version deleted by hand (nlp/base/step-100, the first of its run)."""
    from ckptfs.web.app import create_app
    path = str(tmp_path_factory.mktemp("web-client") / "store")
    build_store(path, enforce=False)
    with Store.open(path) as store:
        store.set_alias("vision", "ft", "keep", "v1")
        store.delete_version("nlp", "base", "step-100", reason="space")
    app = create_app(path)
    yield app.test_client()
    app.close_store()


def test_routes_answer_with_the_fitting_status(client):
    assert client.get("/p/nlp/base/latest").headers["Location"] == "/p/nlp/base/step-500"
    assert client.get("/p/vision/ft/keep").headers["Location"] == "/p/vision/ft/v1"
    for path, message in [("/p/nlp/nope", "no run nlp/nope in the store"),
                          ("/p/nlp/base/step-999", "no version nlp/base/step-999 in the store"),
                          ("/diff?a=nlp/base/step-200&b=nlp/base/nope",
                           "no version nlp/base/nope in the store"),
                          ("/p/nlp/base/..%2F..", "")]:
        response = client.get(path)
        assert response.status_code == 404 and message in response.text, path
    typo = client.get("/diff?a=nlp/base&b=nlp/base/latest")
    assert typo.status_code == 400 and "expected PROJECT/RUN/VERSION, got &#39;nlp/base&#39;" in typo.text
    assert 'value="nlp/base"' in typo.text  # the form keeps what was typed, to fix it
    bad = client.get("/p/nlp/base?q=step+%3D%3E+3")
    assert bad.status_code == 400 and "unknown operator &#39;=&gt;&#39; (did you mean &#39;&gt;=&#39;?)" in bad.text
    assert "Traceback" not in bad.text


def test_a_deleted_version_keeps_its_page_and_its_place_in_the_lineage(client):
    page = client.get("/p/nlp/base/step-100")
    assert page.status_code == 200 and "Deleted" in page.text and "space" in page.text
    graph = client.get("/lineage").text
    assert 'class="node run-0 deleted" data-ref="nlp/base/step-100"' in graph
    assert 'data-from="nlp/base/step-100" data-to="nlp/base/step-200"' in graph
    run = client.get("/p/nlp/base").text
    assert 'data-version="step-100"' not in run  # the run lists what is there


def test_best_follows_the_trainers_choice_until_the_project_names_a_metric(tmp_path):
    """Without a project primary metric, `best` goes by what the Trainer chose
    (metric_for_best_model, recorded as the sidecar's best_by), and the run page says
    so; a run whose job named nothing says how to name a metric."""
    from ckptfs.meta.seal import archive_directory
    from ckptfs.web.app import create_app
    path = str(tmp_path / "store")
    with Store.init(path) as store:
        for run, chosen in (("run", {"metric_for_best_model": "loss", "greater_is_better": False}),
                            ("plain", {})):
            for step, eval_loss, accuracy in ((10, 0.9, 0.5), (20, 0.4, 0.7), (30, 0.6, 0.8)):
                src = tmp_path / f"src-{run}-{step}"
                src.mkdir()
                (src / "model.bin").write_bytes(bytes([step]) * 1000)
                (src / "ckptfs.json").write_text(json.dumps({
                    "step": step, "metrics": {"eval_loss": eval_loss, "eval_accuracy": accuracy},
                    "lineage": {"hyperparameters": {**chosen, **{f"arg_{i}": i for i in range(30)}}}}))
                archive_directory(store, str(src), "bert", run, f"checkpoint-{step}")
    app = create_app(path)
    try:
        page = app.test_client().get("/p/bert/run").text
        aliases = page.split('id="run-aliases"', 1)[1].split("</p>", 1)[0]
        assert ">checkpoint-20</a> (by eval_loss (min), the job&#39;s " \
               "TrainingArguments.metric_for_best_model)" in aliases
        assert 'id="no-best"' not in page
        plain = app.test_client().get("/p/bert/plain").text
        assert 'id="no-best"' in plain
        assert f"ckptfs config set {path} bert primary_metric=METRIC mode=min" in plain
        # A Trainer's long table of arguments starts folded on the version page.
        version = app.test_client().get("/p/bert/run/checkpoint-20").text
        assert '<details class="section"><summary><h3>hyperparameters <span class="count">(32)' in version
    finally:
        app.close_store()
    with Store.open(path) as store:  # the project's own metric wins
        store.update_project_settings("bert", {"primary_metric": "eval_accuracy", "mode": "max"})
    app = create_app(path)
    try:
        page = app.test_client().get("/p/bert/run").text
        assert ">checkpoint-30</a> (by eval_accuracy (max))" in page and 'id="no-best"' not in page
    finally:
        app.close_store()


def test_the_storage_chart_reads_in_bytes_and_dates(client):
    import re
    page = client.get("/storage").text
    chart = page.split('data-metric="bytes"', 1)[1].split("</svg>", 1)[0]
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', chart)
    assert any(t.endswith(" KB") for t in ticks), ticks
    assert any(re.fullmatch(r"\d{4}-\d{2}-\d{2}", t) for t in ticks), ticks  # the day of seal
    assert not any(t.isdigit() and int(t) > 1000 for t in ticks)  # no raw byte counts


def test_the_storage_page_charts_each_projects_stored_bytes(client):
    page = client.get("/storage").text
    chart = page.split('data-metric="stored bytes"', 1)[1].split("</figure>", 1)[0]
    for project in ("nlp", "vision", "secret"):  # roles are not enforced in this store
        assert '<g class="series series-' in chart and f'data-run="{project}"' in chart, project


def test_on_object_storage_it_shows_what_other_machines_seal(s3_store_url, tmp_path):
    """`ckptfs serve s3://…` (moto_server): its pages show the store, and a version
    another machine (a cache directory of its own) imports appears on the run page."""
    from tests.helpers.samples import make_checkpoint
    from tests.helpers.waiting import wait_for
    run_cli_checked("init", s3_store_url)
    run_cli_checked("import", s3_store_url, make_checkpoint(tmp_path / "a", step=1), "p/r/v1")
    with serving(s3_store_url) as address:
        for path in ("/", "/p/p/r", "/p/p/r/v1", "/storage", "/health", "/metrics", "/lineage"):
            assert request(address, path).status == 200, path
        run_cli_checked("--cache-dir", str(tmp_path / "machine-2"), "import", s3_store_url,
                        make_checkpoint(tmp_path / "b", step=2), "p/r/v2")
        wait_for(lambda: 'data-version="v2"' in request(address, "/p/p/r").body,
                 "the other machine's version on the run page")
