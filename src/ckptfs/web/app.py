"""The dashboard's Flask application: `create_app(store_path, token=None)`.

It opens the store once, read-only in what it does (no page changes the store, and a
project the server's user may not read answers 404 without journaling a refusal), and
serves the pages below; `ckptfs serve` (cli/serve.py) runs it under waitress.

    /                              projects and runs: latest, best, sizes
    /p/PROJECT                     one project's runs
    /p/PROJECT/RUN                 versions (sortable, filtered by ?q=EXPR), metric curves,
                                   sibling runs overlaid (?compare=RUN, repeated)
    /p/PROJECT/RUN/VERSION         the sidecar rendered (an alias redirects to its version)
    /lineage                       the lineage graph (?focus=P/R/V, ?project=P)
    /diff?a=P/R/V&b=P/R/V          two versions compared (ckptfs.meta.diff)
    /storage, /health              ckptfs.meta.health / ckptfs.spool.health
    /metrics                       the Prometheus exposition (ckptfs.web.metrics)

With a token, every request must carry it (web/auth.py). Errors a user can cause are a
page with one line and the fitting status; anything else is "internal error" and one
line in the server's log, never a traceback in a page.
"""
import logging
import math
import os
import shlex
from datetime import datetime, timezone

from flask import Flask, Response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from ckptfs.meta.diff import change_text
from ckptfs.meta.query import QueryError
from ckptfs.store import InvalidNameError, NotFoundError, Store, StoreError
from ckptfs.store.backend import BackendUnavailableError
from ckptfs.store.errors import AccessDeniedError

from . import auth, charts, data, graph

log = logging.getLogger("ckptfs.web")
AUDIT_LIMIT = 500  # newest journal entries shown on the health page
DIFF_SUGGESTIONS = 2000  # versions offered in the diff page's boxes


def create_app(store_path: str, *, token: str | None = None) -> Flask:
    """The dashboard over the store at `store_path` (opened now; closed with
    `app.close_store()`). `token`: the secret every request must carry."""
    store = Store.open(store_path)
    app = build_app(store, store_path, token=token)
    app.close_store = store.close
    return app


def build_app(store, store_path: str, *, token: str | None = None) -> Flask:
    """The dashboard over an open store (`ckptfs serve`, which opens and closes it);
    `store_path` is the store as the user named it (in the commands pages suggest)."""
    app = Flask(__name__)
    app.config["CKPTFS_STORE"] = store
    app.config["CKPTFS_STORE_PATH"] = store_path
    auth.install(app, token)
    register_filters(app)
    register_errors(app)
    register_pages(app, store)
    return app


def visibility(store) -> data.Visibility:
    if store.backend.shared:  # another machine may have sealed since: catch up first
        store.committer.catch_up_if_behind()
    return data.Visibility(store)


# -- pages ------------------------------------------------------------------------------
def register_pages(app: Flask, store) -> None:  # noqa: C901 (one short function per page)
    @app.get("/")
    def projects():
        return render_template("projects.html", projects=data.projects_overview(visibility(store)),
                               page="projects")

    @app.get("/p/<project>")
    def project(project):
        visible = visibility(store)
        visible.require_project(project)
        overview = [p for p in data.projects_overview(visible) if p["name"] == project]
        return render_template("projects.html", projects=overview, page="projects",
                               only=project)

    @app.get("/p/<project>/<run>")
    def run(project, run):
        expr = request.args.get("q", "")
        compare = request.args.getlist("compare")
        visible = visibility(store)
        try:
            page = data.run_page(visible, project, run, expr, compare)
            error = None
        except QueryError as e:
            page, error = data.run_page(visible, project, run, "", compare), str(e)
        plots = [c for m in page["metrics"] if (c := charts.metric_chart(m, page["series"]))]
        return render_template("run.html", run=page, charts=plots, query_error=error,
                               page="runs", store_path=app.config["CKPTFS_STORE_PATH"]), \
            400 if error else 200

    @app.get("/p/<project>/<run>/<version>")
    def version(project, run, version):
        visible = visibility(store)
        visible.require_project(project)
        if store.version_record(project, run, version) is None and \
                store.tombstone(project, run, version) is None:
            p, r, v = data.resolve(visible, f"{project}/{run}/{version}")  # an alias
            return redirect(url_for("version", project=p, run=r, version=v))
        page = data.version_page(visible, project, run, version)
        previous = data.previous_checkpoint(visible, project, run, version)
        return render_template("version.html", v=page, previous=previous, page="runs",
                               store_path=app.config["CKPTFS_STORE_PATH"])

    @app.get("/lineage")
    def lineage():
        visible = visibility(store)
        focus = request.args.get("focus") or None
        project = request.args.get("project") or None
        if focus:
            focus = "/".join(data.resolve(visible, focus))
        if project:
            visible.require_project(project)
        return render_template("lineage.html", graph=graph.lineage_graph(visible, focus, project),
                               projects=visible.projects(), page="lineage")

    @app.get("/diff")
    def diff():
        visible = visibility(store)
        a, b = request.args.get("a", "").strip(), request.args.get("b", "").strip()
        result, error, status = None, None, 200
        if a and b:
            from ckptfs.meta.diff import diff_versions
            try:
                for ref in (a, b):
                    data.resolve(visible, ref)  # 404 for a project the user may not read
                result = diff_versions(store, a, b)
            except (NotFoundError, InvalidNameError) as e:  # said on the form, to fix there
                error, status = str(e), 400 if isinstance(e, InvalidNameError) else 404
        # The newest versions as suggestions for the two boxes (any version may be typed).
        versions = [f"{d['project']}/{d['run']}/{d['version']}"
                    for d in visible.documents(fields=[("kind",)])[-DIFF_SUGGESTIONS:]]
        return render_template("diff.html", a=a, b=b, diff=result, error=error,
                               versions=versions, page="diff"), status

    @app.get("/storage")
    def storage():
        from ckptfs.meta.health import storage as storage_figures
        figures = storage_figures(store)
        return render_template("storage.html", s=figures, charts=storage_charts(figures),
                               page="storage")

    @app.get("/health")
    def health():
        from ckptfs.meta.health import audit_log
        from ckptfs.spool.health import health as health_report
        visible = visibility(store)
        report = health_report(store)
        wanted = {k: request.args.get(k, "").strip() for k in ("project", "user", "event")}
        audit = audit_log(store, None, limit=AUDIT_LIMIT, **{k: v or None for k, v in wanted.items()})
        return render_template("health.html", h=report, audit=audit,
                               wanted=wanted, page="health",
                               store_path=app.config["CKPTFS_STORE_PATH"],
                               projects=visible.projects(), bars=hour_bars(report))

    @app.get("/metrics")
    def metrics():
        from ckptfs.web.metrics import CONTENT_TYPE, render
        return Response(render(store), content_type=CONTENT_TYPE)


def storage_charts(figures: dict) -> list[dict]:
    """Bytes over time (by seal date) as the metric chart draws them, a point per day:
    logical and stored of every readable project together, then the stored bytes of
    each project (a line per project)."""
    days = figures.get("timeline") or []
    together = {kind: [{"metrics": {"bytes": day[f"{kind}_bytes"]}} for day in days]
                for kind in ("logical", "stored")}
    projects = sorted({p for day in days for p in day.get("projects", {})})
    per_project = {p: [{"metrics": {"stored bytes": (day["projects"].get(p) or {}).get("stored_bytes")}}
                       for day in days] for p in projects}
    found = [bytes_chart("bytes", together, days), bytes_chart("stored bytes", per_project, days)]
    return [c for c in found if c]


def bytes_chart(metric: str, series: dict[str, list[dict]], days: list[dict]) -> dict | None:
    """A metric chart of byte counts per day: y in B/KB/MB…, x the days' dates."""
    for name, points in series.items():
        for i, (point, day) in enumerate(zip(points, days)):
            point.update(project="", run=name, version=day["date"], step=i)
    chart = charts.metric_chart(metric, series)
    if chart:
        chart["x_label"] = "day of seal"
        chart["y_ticks"] = [{**t, "label": human_size(t["value"])} for t in chart["y_ticks"]]
        chart["x_ticks"] = [{**t, "label": days[int(t["value"])]["date"]}
                            for t in chart["x_ticks"] if float(t["value"]).is_integer()]
    return chart


def hour_bars(report: dict) -> dict:
    """Versions sealed per hour (48 bars), scaled to a 96-pixel-high SVG."""
    hours = report.get("sealed_per_hour") or []
    top = max((h.get("versions", 0) for h in hours), default=0) or 1
    return {"top": top, "bars": [{**h, "height": round(88 * h.get("versions", 0) / top, 1),
                                  "x": 4 + i * 12} for i, h in enumerate(hours)]}


# -- errors -----------------------------------------------------------------------------
def register_errors(app: Flask) -> None:
    def page(status: int, message: str):
        return render_template("error.html", status=status, message=message, page=None), status

    @app.errorhandler(NotFoundError)
    @app.errorhandler(InvalidNameError)
    def not_found(e):
        return page(404, str(e))

    @app.errorhandler(AccessDeniedError)
    def denied(e):
        return page(404, "not found")  # as for a project that is not there: names do not leak

    @app.errorhandler(BackendUnavailableError)
    def unavailable(e):
        return page(503, str(e))

    @app.errorhandler(StoreError)
    def store_error(e):
        return page(500, str(e))

    @app.errorhandler(HTTPException)
    def http_error(e):
        return page(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def internal(e):
        # A bug: one line in the server's log (CKPTFS_DEBUG=1: the traceback), one line
        # on the page.
        detail = " ".join(str(e).split())
        log.error("internal error (%s: %s) on %s", type(e).__name__, detail, request.path,
                  exc_info=bool(os.environ.get("CKPTFS_DEBUG")))
        return page(500, f"internal error ({type(e).__name__}); this is a bug in ckptfs")


# -- template filters -------------------------------------------------------------------
def human_size(n) -> str:
    """Bytes in decimal units, as the CLI prints them."""
    if not isinstance(n, (int, float)):
        return ""
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    power = min(int(math.log(abs(n), 1000)) if n else 0, len(units) - 1)
    return f"{n:.0f} B" if power == 0 else f"{n / 1000 ** power:.1f} {units[power]}"


def number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def age(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def moment(text) -> str:
    """An ISO 8601 UTC time, shortened to the second."""
    if not isinstance(text, str):
        return ""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return text
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


AUDIT_SHOWN_ELSEWHERE = ("seq", "time", "user", "uid", "pid", "type", "project", "run",
                         "version", "prev", "hash")


def audit_details(entry: dict) -> str:
    """The fields of a journal entry its other columns do not show, as short JSON."""
    import json
    rest = {k: v for k, v in entry.items() if k not in AUDIT_SHOWN_ELSEWHERE}
    text = json.dumps(rest, sort_keys=True, default=str)
    return text if len(text) <= 240 else text[:239] + "…"


def register_filters(app: Flask) -> None:
    app.jinja_env.filters.update(size=human_size, num=number, age=age, moment=moment,
                                 audit_details=audit_details, sh=shlex.quote,
                                 change=lambda m: change_text(m["delta"], m["a"], m["b"]))
