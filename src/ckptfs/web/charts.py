"""Metric curves over training step, laid out on the server as SVG coordinates.

`metric_chart(metric, series)` is given one metric's name and, per run, the run's
checkpoint documents in sealing order; it returns what templates/_chart.html draws: the
axes' ticks, and per run a polyline and one marker per checkpoint that has the metric
(with its version, step and value as data attributes, which the hover script and the
browser tests read). A checkpoint without a step is placed by its position in its run.
"""
import math
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 12, 36
PLOT_WIDTH = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
PLOT_HEIGHT = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
SERIES_COLOURS = 8  # the CSS classes series-0 … series-7


def numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def points_of(metric: str, docs: list[dict]) -> list[dict]:
    """(x, value) per checkpoint that has the metric: x is the step, or the
    checkpoint's position in its run when it has none."""
    points = []
    for position, doc in enumerate(docs):
        value = (doc.get("metrics") or {}).get(metric)
        if not numeric(value):
            continue
        step = doc.get("step")
        points.append({"x": step if numeric(step) else position, "value": value,
                       "version": doc["version"], "run": doc["run"],
                       "project": doc["project"], "step": step,
                       "best": "best" in (doc.get("aliases") or ())})
    return points


def nice_ticks(low: float, high: float, count: int = 5) -> list[tuple[float, str]]:
    """About `count` round numbers covering [low, high], each with its label."""
    if high <= low:
        return [(low, tick_label(low, 0))]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    values = [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]
    return [(value, tick_label(value, step)) for value in values]


def scale(low: float, high: float, start: float, length: float, flip: bool = False):
    """A function mapping [low, high] onto [start, start + length] (reversed: y)."""
    span = high - low or 1.0

    def to_pixels(value: float) -> float:
        share = (value - low) / span
        return round(start + (1 - share if flip else share) * length, 2)
    return to_pixels


def tick_label(value: float, step: float) -> str:
    """`value` with as many digits as the ticks' `step` needs to tell neighbours apart
    (an eval_loss between 0.6881 and 0.6884 gets four decimals, not "0.688" five times)."""
    if step and 1e-6 <= step and abs(value) < 1e6:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        text = f"{value:.{decimals}f}"
        return text.lstrip("-") if float(text) == 0 else text  # "0.00", not "-0.00"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    digits = 3 if not step or value == 0 else \
        max(1, math.floor(math.log10(abs(value))) - math.floor(math.log10(step)) + 1)
    return f"{value:.{digits}g}"


def markers(points: list[dict]) -> Markup:
    """The SVG circles of a line's checkpoints, written here rather than in the
    template: a run of 10,000 versions has that many per chart, and a template loop
    costs ten times as much."""
    out = []
    for p in points:
        step = "" if p["step"] is None else escape(str(p["step"]))
        best = (" best", 6) if p["best"] else ("", 4)
        out.append(f'<circle class="point{best[0]}" r="{best[1]}" cx="{p["cx"]}" cy="{p["cy"]}" '
                   f'data-run="{escape(p["run"])}" data-version="{escape(p["version"])}" '
                   f'data-step="{step}" data-value="{p["value"]}"></circle>')
    return Markup("\n".join(out))


def metric_chart(metric: str, series: dict[str, list[dict]]) -> dict | None:
    """The chart of one metric over the runs in `series` (run -> documents); None if no
    checkpoint has it."""
    by_run = {run: points_of(metric, docs) for run, docs in series.items()}
    every = [p for points in by_run.values() for p in points]
    if not every:
        return None
    xs, ys = [p["x"] for p in every], [p["value"] for p in every]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if y_low == y_high:  # a flat line: give it some room
        y_low, y_high = y_low - 0.5, y_high + 0.5
    to_x = scale(x_low, x_high, MARGIN_LEFT, PLOT_WIDTH)
    to_y = scale(y_low, y_high, MARGIN_TOP, PLOT_HEIGHT, flip=True)
    lines = []
    for number, (run, points) in enumerate(by_run.items()):
        for p in points:
            p["cx"], p["cy"] = to_x(p["x"]), to_y(p["value"])
        ordered = sorted(points, key=lambda p: p["x"])
        lines.append({"run": run, "colour": f"series-{number % SERIES_COLOURS}",
                      "points": points, "markers": markers(points),
                      "path": " ".join(f"{p['cx']},{p['cy']}" for p in ordered)})
    return {"metric": metric, "project": every[0]["project"], "width": WIDTH, "height": HEIGHT, "lines": lines,
            "plot": {"left": MARGIN_LEFT, "top": MARGIN_TOP, "right": MARGIN_LEFT + PLOT_WIDTH,
                     "bottom": MARGIN_TOP + PLOT_HEIGHT},
            "x_ticks": [{"at": to_x(t), "value": t, "label": label}
                        for t, label in nice_ticks(x_low, x_high) if x_low <= t <= x_high],
            "y_ticks": [{"at": to_y(t), "value": t, "label": label}
                        for t, label in nice_ticks(y_low, y_high) if y_low <= t <= y_high],
            "x_label": "step" if any(numeric(p["step"]) for p in every) else "checkpoint"}
