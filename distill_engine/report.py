"""Self-contained HTML report: metric tables, reliability diagrams, training curves (inline SVG).

Jinja2 autoescaping covers every user string in the template; the SVG builders escape the
few strings they embed themselves and otherwise emit only numbers.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def reliability_svg(title: str, bins: list[dict[str, float]], size: int = 220) -> Markup:
    """Bars of accuracy per confidence bin against the diagonal."""
    pad = 28
    inner = size - 2 * pad
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 16}" role="img">',
        f'<text x="{pad}" y="14" font-size="12">{html.escape(title)}</text>',
        f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" stroke="#999" '
        'stroke-dasharray="4 3"/>',
    ]
    for b in bins:
        if not b["count"] or not _num(b["accuracy"]):
            continue
        x = pad + b["lo"] * inner
        w = (b["hi"] - b["lo"]) * inner
        h = b["accuracy"] * inner
        parts.append(
            f'<rect x="{x:.1f}" y="{pad + inner - h:.1f}" width="{w - 1:.1f}" height="{h:.1f}" '
            f'fill="#1f77b4" fill-opacity="0.7"><title>conf {b["confidence"]:.3f} acc '
            f"{b['accuracy']:.3f} n={int(b['count'])}</title></rect>"
        )
    parts.append(f'<text x="{pad}" y="{size - 6}" font-size="10">confidence →</text></svg>')
    return Markup("".join(parts))


def curves_svg(curves: list[dict[str, Any]], key: str, width: int = 460, height: int = 200) -> Markup:
    """One polyline per training phase for `key` over epochs."""
    phases: dict[str, list[float]] = {}
    for rec in curves:
        if _num(rec.get(key)):
            phases.setdefault(str(rec["phase"]), []).append(float(rec[key]))
    if not phases:
        return Markup("")
    vals = [v for vs in phases.values() for v in vs]
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1.0
    n = max(len(vs) for vs in phases.values())
    pad = 34
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="{pad}" y="14" font-size="12">{html.escape(key)}</text>',
        f'<text x="2" y="{pad}" font-size="9">{hi:.3g}</text>',
        f'<text x="2" y="{height - pad}" font-size="9">{lo:.3g}</text>',
    ]
    for i, (phase, vs) in enumerate(phases.items()):
        pts = " ".join(
            f"{pad + (j / max(n - 1, 1)) * (width - 2 * pad):.1f},"
            f"{height - pad - (v - lo) / (hi - lo) * (height - 2 * pad):.1f}"
            for j, v in enumerate(vs)
        )
        color = _COLORS[i % len(_COLORS)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        parts.append(
            f'<text x="{width - pad - 110}" y="{pad + 12 * i}" font-size="10" fill="{color}">'
            f"{html.escape(phase)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else "–"
    return str(v)


def render_report(
    result: dict[str, Any], card: dict[str, Any], reliability: dict[str, list[dict[str, float]]]
) -> str:
    """The report page as a string."""
    env = Environment(
        loader=PackageLoader("distill_engine", "templates"), autoescape=select_autoescape(["html"])
    )
    env.filters["fmt"] = _fmt
    keys = sorted(
        {k for rec in result.get("curves", []) for k, v in rec.items() if _num(v) and k not in ("epoch",)}
    )
    return env.get_template("report.html").render(
        result=result,
        card=card,
        metric_keys=["accuracy", "agreement", "ece", "ece_adaptive", "brier", "nll"],
        reliability=[reliability_svg(name, bins) for name, bins in reliability.items()],
        curves=[curves_svg(result.get("curves", []), k) for k in keys],
        raw_json=json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=1),
    )
