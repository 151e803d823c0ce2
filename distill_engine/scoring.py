"""Scoring a model's logits on a table: metric blocks per slice, temperature, JSON-safe output."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics as M
from .calibration import apply_temperature, fit_temperature
from .data import Table


def evaluate(
    logits: np.ndarray,
    temperature: float,
    labels: np.ndarray | None,
    teacher: np.ndarray,
    slices: np.ndarray | None,
) -> dict[str, Any]:
    """Metric block (+ per slice) of calibrated probabilities, and the uncalibrated block."""
    raw = M.softmax(logits)
    cal = apply_temperature(logits, temperature)
    return {
        "calibrated": block(cal, labels, teacher, slices),
        "uncalibrated": block(raw, labels, teacher, slices),
    }


def block(
    probs: np.ndarray, labels: np.ndarray | None, teacher: np.ndarray, slices: np.ndarray | None
) -> dict[str, Any]:
    out: dict[str, Any] = M.summary(probs, labels, teacher)
    if slices is not None:
        out["slices"] = {
            str(s): M.summary(probs[m], None if labels is None else labels[m], teacher[m])
            for s in sorted(np.unique(slices))
            for m in [slices == s]
        }
    return out


def labels_or_none(t: Table) -> np.ndarray | None:
    """Eval labels when every row has one (metrics against labels need all of them)."""
    return t.y if t.y is not None and bool((t.y >= 0).all()) else None


def fit_t(logits: np.ndarray, labels: np.ndarray | None, teacher: np.ndarray) -> tuple[float, str]:
    if labels is not None and len(labels) and bool((labels >= 0).all()):
        return fit_temperature(logits, labels), "labels"
    return fit_temperature(logits, teacher), "teacher_probs"


def json_safe(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [json_safe(v) for v in o]
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, float | np.floating):
        f = float(o)
        return f if np.isfinite(f) else None
    return o
