"""Renders a run's report: `report.json` (numbers) → `report.html` (same numbers, escaped, with SVG).

Every string that came from users or data (slice labels, reasons, errors, versions) goes
through Jinja2's autoescape; the only markup not escaped is the SVG built here from numbers.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape
from markupsafe import Markup

from distill_watchdog.loop.artifacts import drift_page
from distill_watchdog.store import Store

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, Undefined):
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None or isinstance(value, Undefined) else f"{100 * float(value):.1f}%"


def reliability_svg(
    bins_before: list[dict[str, Any]], bins_after: list[dict[str, Any]], size: int = 260
) -> Markup:
    """A reliability diagram: accuracy vs confidence per bin, before (grey) and after (blue)."""
    pad = 30
    inner = size - 2 * pad

    def xy(conf: float, acc: float) -> tuple[float, float]:
        return pad + conf * inner, pad + (1 - acc) * inner

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
        f'aria-label="reliability diagram">',
        f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" '
        'stroke="#ccc" stroke-dasharray="4"/>',
        f'<text x="{size / 2}" y="{size - 6}" font-size="11" text-anchor="middle">confidence</text>',
        f'<text x="10" y="{size / 2}" font-size="11" transform="rotate(-90 10 {size / 2})" '
        f'text-anchor="middle">accuracy</text>',
    ]
    for bins, colour in ((bins_before, "#888"), (bins_after, "#1f6feb")):
        pts = [
            xy(float(b["confidence"]), float(b["accuracy"]))
            for b in bins
            if b.get("count") and b.get("confidence") is not None and math.isfinite(float(b["confidence"]))
        ]
        if pts:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts)
    parts.append("</svg>")
    return Markup("".join(parts))


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.globals["reliability_svg"] = reliability_svg
    return env


ENV = environment()


def run_context(store: Store, run_id: str) -> dict[str, Any] | None:
    """Everything a report page shows: the run row, its detail, and report.json when present."""
    row = store.get_run(run_id)
    if row is None:
        return None
    detail = orjson.loads(row.detail_json)
    path = Path(row.run_dir) / "report.json"
    report: dict[str, Any] = {}
    if path.exists():
        try:
            report = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            report = {}
    return {
        "run": row,
        "detail": detail,
        "report": report,
        "drift_page": drift_page(Path(row.run_dir)),
        "trained_student": _trained_student(Path(row.run_dir) / report.get("chosen", "out")),
    }


def _trained_student(out: Path) -> dict[str, Any] | None:
    """The architecture the engine trained: the chosen candidate card's `training.student`."""
    try:
        card = orjson.loads((out / "card.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    student = (card.get("training") or {}).get("student") if isinstance(card, dict) else None
    return student if isinstance(student, dict) else None


def render_run(store: Store, run_id: str) -> Path | None:
    """Writes `report.html` and refreshes `report.json` with the run's status. Blocking."""
    ctx = run_context(store, run_id)
    if ctx is None:
        return None
    row = ctx["run"]
    run_dir = Path(row.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = dict(ctx["report"])
    report.update(
        run_id=row.id,
        status=row.status,
        trigger=row.trigger,
        parent_version=row.parent_version,
        candidate_version=row.candidate_version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        error=ctx["detail"].get("error"),
        reason=report.get("reason") or ctx["detail"].get("reason", ""),
        trigger_numbers=report.get("trigger_numbers") or ctx["detail"].get("trigger_numbers", {}),
    )
    (run_dir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    ctx["report"] = report
    html = ENV.get_template("report.html").render(**ctx, standalone=True)
    (run_dir / "report.html").write_text(html)
    return run_dir / "report.html"
