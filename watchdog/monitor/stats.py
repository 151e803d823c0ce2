"""Window metrics per slice and weak-slice selection, on the engine's metric functions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distill_engine import metrics as M

from .window import Window

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest for small n and for p near 0 or 1."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _f(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def block(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Agreement, KL(teacher||student), calibration vs teacher and vs labels, estimated accuracy."""
    n = len(student)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out
    agree = student.argmax(1) == teacher.argmax(1)
    lo, hi = wilson(float(agree.sum()), n)
    vs_teacher = M.summary(student, None, teacher)
    out.update(
        agreement=float(agree.mean()),
        agreement_ci=[lo, hi],
        kl=_f(M.kl_divergence(teacher, student)),
        estimated_accuracy=float(student.max(1).mean()),
        teacher={k: _f(vs_teacher[k]) for k in ("ece", "ece_adaptive", "brier", "nll")},
    )
    known = labels >= 0
    out["labelled"] = int(known.sum())
    if known.any():
        vs_labels = M.summary(student[known], labels[known])
        out["labels"] = {k: _f(vs_labels[k]) for k in ("accuracy", "ece", "ece_adaptive", "brier", "nll")}
    return out


def slice_table(w: Window) -> dict[str, dict[str, Any]]:
    """Metric blocks for the whole window (`all`) and every slice label seen in it."""
    table = {"all": block(w.student, w.teacher, w.labels)}
    labels = sorted({label for row in w.slices for label in row})
    for label in labels:
        m = w.mask(label)
        table[label] = block(w.student[m], w.teacher[m], w.labels[m])
    return table


def weak_slices(w: Window, table: dict[str, dict[str, Any]], min_samples: int) -> list[dict[str, Any]]:
    """Slices whose agreement is significantly below the rest of the window, by expected gain.

    Significant: the slice's Wilson upper bound lies below the Wilson lower bound of the rows
    outside it. Expected gain: the window agreement recovered if the slice rose to the rest's
    level, i.e. share of rows x gap.
    """
    n_all = len(w)
    if n_all == 0:
        return []
    agree = (w.student.argmax(1) == w.teacher.argmax(1)).astype(np.float64)
    out = []
    for label, stats in table.items():
        if label == "all" or stats["n"] < min_samples:
            continue
        m = w.mask(label)
        rest = ~m
        if rest.sum() < min_samples:
            continue
        p_in, p_rest = float(agree[m].mean()), float(agree[rest].mean())
        _, hi_in = wilson(float(agree[m].sum()), int(m.sum()))
        lo_rest, _ = wilson(float(agree[rest].sum()), int(rest.sum()))
        if hi_in < lo_rest:
            gap = p_rest - p_in
            out.append(
                {
                    "slice": label,
                    "n": int(m.sum()),
                    "agreement": p_in,
                    "agreement_ci": [float(wilson(float(agree[m].sum()), int(m.sum()))[0]), hi_in],
                    "rest_agreement": p_rest,
                    "rest_ci_low": lo_rest,
                    "gap": gap,
                    "expected_gain": gap * m.sum() / n_all,
                }
            )
    out.sort(key=lambda r: -r["expected_gain"])
    return out


def top_slices(table: dict[str, dict[str, Any]], k: int) -> list[str]:
    """The k largest slices: the only ones with their own gauge series (the rest are `other`)."""
    names = [s for s in table if s != "all"]
    names.sort(key=lambda s: (-table[s]["n"], s))
    return names[:k]
