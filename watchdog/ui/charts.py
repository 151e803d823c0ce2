"""Server-side SVG charts of the stored monitor cycles for the dashboard.

Per slice: agreement and ECE against the teacher and the drifted feature share over a time
range, each with the policy's threshold, the runs (started, promoted, rejected...) as markers and
the student versions as bands. Plain SVG with presentation attributes: no script, no external
asset, so the page works offline and under a strict Content-Security-Policy. The work is
bounded: at most `MAX_CYCLES` cycles are read for a page and about `MAX_POINTS` points drawn per
series (largest-triangle-three-buckets, which keeps the dips a person is looking for).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from markupsafe import Markup, escape

from distill_watchdog.config import PolicyConfig
from distill_watchdog.loop.monitor.stats import top_slices

RANGES = {"6h": 6 * 3600.0, "24h": 24 * 3600.0, "7d": 7 * 24 * 3600.0}
DEFAULT_RANGE = "24h"
MAX_CYCLES = 720
MAX_POINTS = 200
MAX_SLICES = 8
WIDTH, HEIGHT = 360, 150
LEFT, RIGHT, TOP, BOTTOM = 38, 8, 16, 20
MARKER_COLOURS = {
    "started": "#8c959f",
    "promoted": "#1a7f37",
    "rejected": "#cf222e",
    "declined": "#cf222e",
    "failed": "#cf222e",
}
BAND_FILLS = ("#f6f8fa", "#eaeef2")


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    colour: str
    threshold: str  # the PolicyConfig field drawn as a dashed line


METRICS = (
    Metric("agreement", "agreement with the teacher", "#1f6feb", "min_agreement"),
    Metric("ece", "ECE against the teacher", "#8250df", "max_ece"),
    Metric("drift", "drifted feature share", "#9a6700", "max_drift_share"),
)


@dataclass(frozen=True)
class Marker:
    at: float
    kind: str  # started | promoted | rejected | declined | failed
    run: str


@dataclass(frozen=True)
class Band:
    start: float
    end: float
    version: str


def lttb(t: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest-triangle-three-buckets: `n` of the points (first and last kept) that keep the shape."""
    if len(t) <= n or n < 3:
        return t, v
    edges = np.linspace(1, len(t) - 1, n - 1).astype(int)
    keep = [0]
    for b in range(n - 2):
        lo, hi = edges[b], edges[b + 1]
        nxt_lo, nxt_hi = edges[b + 1], edges[b + 2] if b + 2 < len(edges) else len(t)
        ct, cv = t[nxt_lo:nxt_hi].mean(), v[nxt_lo:nxt_hi].mean()
        at, av = t[keep[-1]], v[keep[-1]]
        area = np.abs((at - ct) * (v[lo:hi] - av) - (at - t[lo:hi]) * (cv - av))
        keep.append(lo + int(area.argmax()))
    keep.append(len(t) - 1)
    idx = np.asarray(keep)
    return t[idx], v[idx]


def _value(summary: dict[str, Any], label: str, key: str) -> float:
    if key == "drift":
        found = ((summary.get("drift") or {}).get(label) or {}).get("share")
    else:
        stats = (summary.get("slices") or {}).get(label) or {}
        found = stats.get("agreement") if key == "agreement" else (stats.get("teacher") or {}).get("ece")
    return float(found) if isinstance(found, int | float) and math.isfinite(found) else math.nan


class Frame:
    """Maps (time, value) to chart pixels."""

    def __init__(self, t0: float, t1: float, lo: float, hi: float) -> None:
        self.t0, self.t1, self.lo, self.hi = t0, t1, lo, hi

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) / (self.t1 - self.t0) * (WIDTH - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return TOP + (self.hi - v) / (self.hi - self.lo) * (HEIGHT - TOP - BOTTOM)


def _y_range(values: np.ndarray, threshold: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo = min(float(finite.min()) if len(finite) else threshold, threshold)
    hi = max(float(finite.max()) if len(finite) else threshold, threshold)
    pad = max(0.02, 0.1 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1.0 else hi + pad


def _polylines(frame: Frame, t: np.ndarray, v: np.ndarray, colour: str) -> list[str]:
    """One polyline per run of known values (a gap where a cycle had none), LTTB per run."""
    out = []
    # Stretches without a completed cycle (skipped cycles, a stopped daemon) are not bridged.
    dt = np.diff(t)
    gap = np.r_[False, dt > 3 * float(np.median(dt))] if len(t) > 2 else np.zeros(len(t), dtype=bool)
    known = np.isfinite(v)
    starts = known & (gap | ~np.r_[False, known[:-1]])
    ends = known & (np.r_[gap[1:], True] | ~np.r_[known[1:], False])
    bounds = np.ravel(np.column_stack([np.flatnonzero(starts), np.flatnonzero(ends) + 1]))
    total = max(1, int(known.sum()))
    for start, end in zip(bounds[::2], bounds[1::2], strict=True):
        st, sv = lttb(t[start:end], v[start:end], max(3, MAX_POINTS * (end - start) // total))
        pts = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in zip(st, sv, strict=True))
        if len(st) == 1:
            x, y = frame.x(st[0]), frame.y(sv[0])
            out.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>')
        else:
            out.append(
                f'<polyline class="series" points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
    return out


def _text(x: float, y: float, content: str, anchor: str = "start") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="9" text-anchor="{anchor}" fill="#57606a">{content}</text>'
    )


def _clock(ts: float, span: float) -> str:
    when = datetime.fromtimestamp(ts, UTC)
    return when.strftime("%m-%d %H:%M" if span > 86400 else "%H:%M" if span > 3600 else "%H:%M:%S")


def chart_svg(
    metric: Metric,
    label: str,
    t: np.ndarray,
    v: np.ndarray,
    threshold: float,
    span: tuple[float, float],
    markers: list[Marker],
    bands: list[Band],
    name_versions: bool,
) -> Markup:
    """One chart; every string that came from data (slice, run id, version) is escaped."""
    lo, hi = _y_range(v, threshold)
    frame = Frame(span[0], span[1], lo, hi)
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" data-metric="{metric.key}" data-slice="{escape(label)}">',
        f"<title>{escape(label)}: {metric.title}</title>",
    ]
    for i, band in enumerate(bands):
        x0, x1 = max(LEFT, frame.x(band.start)), min(right, frame.x(band.end))
        if x1 <= x0:
            continue
        parts.append(
            f'<rect class="version" x="{x0:.1f}" y="{TOP}" width="{x1 - x0:.1f}" height="{bottom - TOP}" '
            f'fill="{BAND_FILLS[i % 2]}"><title>student {escape(band.version)}</title></rect>'
        )
        if name_versions and x1 - x0 > 48:
            parts.append(_text(x0 + 2, TOP - 4, escape(band.version[:8])))
    frame_box = f'x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}"'
    parts.append(f'<rect {frame_box} fill="none" stroke="#d0d7de"/>')
    ty = frame.y(threshold)
    parts.append(
        f'<line class="threshold" x1="{LEFT}" y1="{ty:.1f}" x2="{right}" y2="{ty:.1f}" stroke="#cf222e" '
        f'stroke-dasharray="4 3"><title>threshold {threshold:g}</title></line>'
    )
    for m in markers:
        if not span[0] <= m.at <= span[1]:
            continue
        x = frame.x(m.at)
        dash = ' stroke-dasharray="2 2"' if m.kind == "started" else ""
        parts.append(
            f'<line class="marker marker-{m.kind}" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}" '
            f'stroke="{MARKER_COLOURS.get(m.kind, "#8c959f")}" stroke-width="1.5"{dash}>'
            f"<title>run {escape(m.run)} {m.kind} {_clock(m.at, 0)} UTC</title></line>"
        )
    parts.extend(_polylines(frame, t, v, metric.colour))
    for value in (lo, hi, threshold):
        parts.append(_text(LEFT - 3, frame.y(value) + 3, f"{value:.2f}", "end"))
    for i in range(4):
        ts = span[0] + i * (span[1] - span[0]) / 3
        anchor = ("start", "middle", "middle", "end")[i]
        parts.append(_text(frame.x(ts), HEIGHT - 6, _clock(ts, span[1] - span[0]), anchor))
    parts.append("</svg>")
    return Markup("".join(parts))


def _markers(runs: list[Any]) -> list[Marker]:
    out = []
    for run in runs:
        out.append(Marker(run.created_at, "started", run.id))
        if run.status in MARKER_COLOURS and run.status != "started":
            out.append(Marker(run.updated_at, run.status, run.id))
    return out


def _bands(history: list[tuple[float, str]], span: tuple[float, float]) -> list[Band]:
    """The active student version over the span, from the activation history."""
    out: list[Band] = []
    for at, version in history:
        if at > span[1]:
            break
        if out and at <= span[0]:
            out.pop()
        if out:
            out[-1] = Band(out[-1].start, at, out[-1].version)
        out.append(Band(max(at, span[0]), span[1], version))
    return out


def dashboard_charts(
    cycles: list[Any],
    runs: list[Any],
    history: list[tuple[float, str]],
    policy: PolicyConfig,
    top_k: int,
    range_key: str,
    now: float | None = None,
) -> dict[str, Any]:
    """What `dashboard_charts.html` draws: one row of charts per slice, for the time range."""
    now = time.time() if now is None else now
    # The axis starts where the data does when that is later than the range's start (a new
    # deployment's first hour is not drawn as a sliver at the right edge of 7 days).
    first = min([c.at for c in cycles[:1]] + [r.created_at for r in runs[:1]], default=now)
    start = max(now - RANGES[range_key], first - 0.02 * (now - first))
    span = (start, now) if now - start > 1 else (now - RANGES[range_key], now)
    summaries = [orjson.loads(c.summary_json) for c in cycles]
    at = np.asarray([c.at for c in cycles], dtype=np.float64)
    latest = summaries[-1] if summaries else {}
    weak = [w["slice"] for w in latest.get("weak_slices", []) if isinstance(w, dict)]
    table = latest.get("slices") or {}
    labels = ["all", *weak, *top_slices(table, top_k)]
    labels = [s for i, s in enumerate(labels) if s in table and s not in labels[:i]][:MAX_SLICES]
    markers = _markers(runs)
    bands = _bands(history, span)
    rows = []
    for row, label in enumerate(labels):
        charts = []
        for metric in METRICS:
            values = np.asarray([_value(s, label, metric.key) for s in summaries], dtype=np.float64)
            threshold = float(getattr(policy, metric.threshold))
            charts.append(chart_svg(metric, label, at, values, threshold, span, markers, bands, row == 0))
        rows.append({"label": label, "weak": label in weak, "charts": charts})
    return {
        "range": range_key,
        "since": span[0],
        "ranges": list(RANGES),
        "cycles": len(cycles),
        "metrics": [m.title for m in METRICS],
        "rows": rows,
        "runs": len(runs),
        "versions": [b.version for b in bands],
        "legend": legend_svg(),
    }


def legend_svg() -> Markup:
    """The key to the charts' colours and line styles."""
    items = [(m.title, m.colour, "") for m in METRICS] + [("threshold", "#cf222e", "4 3")]
    items += [
        (f"run {k}", c, "2 2" if k == "started" else "") for k, c in MARKER_COLOURS.items() if k != "declined"
    ]
    parts, x = [], 0
    for name, colour, dash in items:
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{x}" y1="8" x2="{x + 18}" y2="8" stroke="{colour}" stroke-width="2"{dashed}/>'
        )
        parts.append(_text(x + 22, 11, name))
        x += 30 + 5 * len(name)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="legend" width="{x}" height="16" role="img">'
        f"<title>legend</title>{''.join(parts)}</svg>"
    )
