"""Gates: the candidate against the active student, per slice, on the frozen eval set and the hold-out.

- min_gain: every weak slice's agreement with the teacher improves by at least
  `policy.min_gain` on its changed hold-out rows (its rows since the loop last saw it
  healthy, where the problem was seen; the whole slice when none are marked);
- max_regression (interval-aware): no slice with enough rows, on either set, gets worse by
  more than `policy.max_regression` with the paired 95% bootstrap interval of the change
  entirely below zero (a drop within noise does not fail), in agreement with the teacher
  and, where every row is labelled, in accuracy;
- calibration: the candidate's ECE on the hold-out is within max(`policy.max_ece`, the
  active student's ECE).
A policy run with no weak slice (started by agreement, ECE or drift) passes min_gain on
`all`, the whole hold-out; a manual run naming no slice has no min_gain gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distill_engine import metrics as M

MIN_SLICE_ROWS = 30


@dataclass
class EvalSet:
    name: str
    x: np.ndarray
    teacher: np.ndarray
    labels: np.ndarray | None  # only when every row is labelled
    slices: list[list[str]]
    changed: np.ndarray | None = None  # weak slices' changed rows (since their change point)

    def masks(self) -> dict[str, np.ndarray]:
        out = {"all": np.ones(len(self.x), dtype=bool)}
        for label in sorted({s for row in self.slices for s in row}):
            m = np.fromiter((label in row for row in self.slices), dtype=bool, count=len(self.slices))
            out[label] = m
            if self.changed is not None and (m & self.changed).any() and not (m <= self.changed).all():
                out[changed_key(label)] = m & self.changed
        return out


def changed_key(label: str) -> str:
    """The table row of a slice's changed rows."""
    return f"{label} (changed)"


def compare(es: EvalSet, before: np.ndarray, after: np.ndarray, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per slice: agreement (and accuracy) before/after, the paired change and its 95% interval."""
    t = es.teacher.argmax(1)
    a_ok = (before.argmax(1) == t).astype(np.float64)
    b_ok = (after.argmax(1) == t).astype(np.float64)
    out = {}
    for label, m in es.masks().items():
        n = int(m.sum())
        if n == 0:
            continue
        est, lo, hi = M.bootstrap_ci(b_ok[m] - a_ok[m], n_boot=500, seed=seed)
        row: dict[str, Any] = {
            "n": n,
            "before": float(a_ok[m].mean()),
            "after": float(b_ok[m].mean()),
            "change": est,
            "ci": [lo, hi],
        }
        if es.labels is not None:
            row["accuracy_before"] = M.accuracy(before[m], es.labels[m])
            row["accuracy_after"] = M.accuracy(after[m], es.labels[m])
            right = (after[m].argmax(1) == es.labels[m]).astype(np.float64)
            was = (before[m].argmax(1) == es.labels[m]).astype(np.float64)
            a_est, a_lo, a_hi = M.bootstrap_ci(right - was, n_boot=500, seed=seed)
            row["accuracy_change"], row["accuracy_ci"] = a_est, [a_lo, a_hi]
        out[label] = row
    return out


def _ece(es: EvalSet, probs: np.ndarray) -> float:
    target = es.labels if es.labels is not None else es.teacher.argmax(1)
    return M.ece(probs, target)


def judge(
    sets: list[tuple[EvalSet, np.ndarray, np.ndarray]],
    weak: list[str],
    min_gain: float,
    max_regression: float,
    max_ece: float,
) -> dict[str, Any]:
    """All gate decisions with their numbers; `passed` only when every gate passes."""
    tables = {es.name: compare(es, before, after) for es, before, after in sets}
    gates: list[dict[str, Any]] = []
    holdout = tables.get("holdout", {})
    for label in weak:
        row = holdout.get(changed_key(label), holdout.get(label))
        if row is None:
            gates.append({"gate": "min_gain", "slice": label, "passed": False, "why": "no hold-out rows"})
            continue
        gates.append(
            {
                "gate": "min_gain",
                "slice": label,
                "set": "holdout",
                "rows": "changed" if changed_key(label) in holdout else "slice",
                "n": row["n"],
                "change": row["change"],
                "threshold": min_gain,
                "passed": bool(row["change"] >= min_gain),
            }
        )
    for name, table in tables.items():
        for label, row in table.items():
            if row["n"] < MIN_SLICE_ROWS:
                continue
            regressed = row["change"] < -max_regression and row["ci"][1] < 0
            gate = {
                "gate": "max_regression",
                "slice": label,
                "set": name,
                "change": row["change"],
                "ci": row["ci"],
                "threshold": max_regression,
            }
            if "accuracy_change" in row:  # labelled rows: accuracy must not drop either
                gate.update(accuracy_change=row["accuracy_change"], accuracy_ci=row["accuracy_ci"])
                regressed |= row["accuracy_change"] < -max_regression and row["accuracy_ci"][1] < 0
            gates.append({**gate, "passed": not regressed})
    for es, before, after in sets:
        if es.name != "holdout":
            continue
        e_before, e_after = _ece(es, before), _ece(es, after)
        bound = max(max_ece, e_before)
        gates.append(
            {
                "gate": "calibration",
                "set": es.name,
                "ece_before": e_before,
                "ece_after": e_after,
                "threshold": bound,
                "passed": bool(e_after <= bound),
            }
        )
    failed = [g for g in gates if not g["passed"]]
    return {"passed": not failed, "failed": failed, "gates": gates, "tables": tables}
