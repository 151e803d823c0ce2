"""The frozen evaluation set per teacher, and re-evaluation of a new teacher version on it.

Frozen means: written once (from `sampling.eval_set`, an npz with `x`, optional `y` and
`slice`, labelled by the pinned teacher version; or from the first `sampling.eval_set_size`
samples that version answered), kept in its own table and never handed to training.
A new version passes when its top-1 agreement with the stored outputs is at least
`sampling.reeval_min_agreement` and, where labels exist, its accuracy is not lower than
the pinned version's by more than `policy.max_regression`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill_watchdog.store import Store
from distill_watchdog.store.tables import EvalRow
from distill_watchdog.store.vectors import from_blob, to_blob


@dataclass(slots=True)
class EvalResult:
    passed: bool
    rows: int
    agreement: float
    accuracy_new: float | None = None
    accuracy_pinned: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "agreement": round(self.agreement, 6),
            "accuracy_new": self.accuracy_new,
            "accuracy_pinned": self.accuracy_pinned,
            "reason": self.reason,
        }


def load_file(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as data:
        x = np.asarray(data["x"], dtype=np.float32)
        y = np.asarray(data["y"]) if "y" in data else None
        sl = np.asarray(data["slice"]).astype(str) if "slice" in data else None
    if x.ndim != 2 or (y is not None and len(y) != len(x)):
        raise ValueError(f"{path}: expected x [N, D] and y [N]")
    return x, y, sl


def rows_from_arrays(
    teacher: str,
    version: str,
    source: str,
    x: np.ndarray,
    probs: np.ndarray,
    y: np.ndarray | None = None,
    slices: np.ndarray | None = None,
) -> list[EvalRow]:
    return [
        EvalRow(
            teacher=teacher,
            ordinal=i,
            features=to_blob(x[i]),
            probs=to_blob(probs[i]),
            version=version,
            label=None if y is None else int(y[i]),
            slice="" if slices is None else str(slices[i])[:200],
            source=source,
        )
        for i in range(len(x))
    ]


def freeze_from_samples(store: Store, teacher: str, version: str, size: int, minimum: int) -> int:
    """Freezes the first `size` samples labelled by `version` once there are at least `minimum`."""
    if store.eval_count(teacher) > 0:
        return 0
    # Counted before anything is loaded: the sampler tries after every write until the set is
    # full (at a low sampling rate, for a long time), and loading too few rows is wasted work.
    if store.count_teacher_labelled(teacher, version, max(minimum, 1)) < max(minimum, 1):
        return 0
    found = store.first_teacher_labelled(teacher, version, size)
    if len(found) < minimum or not found:
        return 0
    x = np.asarray([r["features"] for r in found], dtype=np.float32)
    probs = np.asarray([r["probs"] for r in found], dtype=np.float32)
    labels = [r["label"] for r in found]
    y = np.asarray(labels) if all(v is not None for v in labels) else None
    slices = np.asarray([",".join(f"{k}={v}" for k, v in sorted(r["slices"].items())) for r in found])
    store.add_eval_rows(rows_from_arrays(teacher, version, "samples", x, probs, y, slices))
    return len(found)


@dataclass(slots=True)
class FrozenSet:
    x: np.ndarray
    probs: np.ndarray
    y: np.ndarray | None  # only when every row has a label
    version: str


def frozen(store: Store, teacher: str) -> FrozenSet | None:
    rows = store.eval_rows(teacher)
    if not rows:
        return None
    x = np.stack([from_blob(r.features) for r in rows])
    probs = np.stack([from_blob(r.probs) for r in rows])
    y = np.asarray([r.label for r in rows]) if all(r.label is not None for r in rows) else None
    return FrozenSet(x, probs, y, rows[0].version)


def judge(
    reference: FrozenSet, new_probs: np.ndarray, min_agreement: float, max_regression: float
) -> EvalResult:
    if new_probs.shape != reference.probs.shape:
        return EvalResult(
            False,
            len(reference.x),
            0.0,
            reason=f"answer shape {new_probs.shape} "
            f"differs from the pinned version's {reference.probs.shape}",
        )
    new_top, old_top = new_probs.argmax(1), reference.probs.argmax(1)
    agreement = float((new_top == old_top).mean())
    result = EvalResult(agreement >= min_agreement, len(reference.x), agreement)
    if not result.passed:
        result.reason = f"agreement {agreement:.3f} < {min_agreement:.3f}"
    if reference.y is not None:
        result.accuracy_new = float((new_top == reference.y).mean())
        result.accuracy_pinned = float((old_top == reference.y).mean())
        if result.accuracy_new < result.accuracy_pinned - max_regression:
            result.passed = False
            new, old = result.accuracy_new, result.accuracy_pinned
            worse = f"accuracy {new:.3f} < pinned {old:.3f} - {max_regression:g}"
            result.reason = f"{result.reason}; {worse}" if result.reason else worse
    return result
