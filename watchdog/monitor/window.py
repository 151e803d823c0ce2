"""The current window of sampled rows as arrays: features, student and teacher probabilities, slices."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import Settings
from ..store import Store


@dataclass
class Window:
    x: np.ndarray  # [N, D]
    student: np.ndarray  # [N, C]
    teacher: np.ndarray  # [N, C] weighted mix of the answering, unquarantined teachers
    labels: np.ndarray  # [N], -1 where no feedback label
    slices: list[list[str]]  # per row: "key=value" labels
    at: np.ndarray  # [N] sample times
    student_versions: np.ndarray
    teacher_versions: dict[str, list[str]] = field(default_factory=dict)
    dropped_no_teacher: int = 0

    def __len__(self) -> int:
        return len(self.x)

    def mask(self, label: str) -> np.ndarray:
        return np.fromiter((label in s for s in self.slices), dtype=bool, count=len(self.slices))

    def slice_strings(self) -> np.ndarray:
        """One string per row (sorted labels joined by ','), for the engine's `slice` column."""
        return np.asarray([",".join(sorted(s)) or "none" for s in self.slices])


def combine_teachers(teachers: dict[str, Any], weights: dict[str, float]) -> np.ndarray | None:
    """Weighted mean of the rows' usable teacher answers (quarantined and failed ones skipped)."""
    total, mix = 0.0, None
    for name, answer in teachers.items():
        if answer.get("quarantined") or answer.get("probs") is None:
            continue
        w = weights.get(name, 1.0)
        p = np.asarray(answer["probs"], dtype=np.float64) * w
        mix = p if mix is None else mix + p
        total += w
    return None if mix is None or total <= 0 else mix / total


def load_window(store: Store, settings: Settings, limit: int | None = None) -> Window:
    """The newest `monitor.window` rows (and within `monitor.window_s` when set); quarantine excluded."""
    cfg = settings.monitor
    rows = store.recent_samples(limit=limit or cfg.window, include_quarantined=False)
    if cfg.window_s is not None:
        cutoff = time.time() - cfg.window_s
        rows = [r for r in rows if r["at"] >= cutoff]
    return window_from_rows(rows, {t.name: t.weight for t in settings.teachers})


def window_from_rows(rows: list[dict[str, Any]], weights: dict[str, float]) -> Window:
    rows = sorted(rows, key=lambda r: r["at"])
    keep, teacher = [], []
    versions: dict[str, set[str]] = {}
    for r in rows:
        mix = combine_teachers(r["teachers"], weights)
        if mix is None:
            continue
        keep.append(r)
        teacher.append(mix)
        for name, answer in r["teachers"].items():
            if answer.get("version"):
                versions.setdefault(name, set()).add(answer["version"])
    if not keep:
        return Window(
            np.zeros((0, 0), np.float32),
            np.zeros((0, 0)),
            np.zeros((0, 0)),
            np.zeros(0, np.int64),
            [],
            np.zeros(0),
            np.zeros(0, dtype=object),
            dropped_no_teacher=len(rows),
        )
    return Window(
        x=np.asarray([r["features"] for r in keep], dtype=np.float32),
        student=np.asarray([r["student_probs"] for r in keep], dtype=np.float64),
        teacher=np.asarray(teacher, dtype=np.float64),
        labels=np.asarray([-1 if r["label"] is None else int(r["label"]) for r in keep], dtype=np.int64),
        slices=[[f"{k}={v}" for k, v in sorted(r["slices"].items())] for r in keep],
        at=np.asarray([r["at"] for r in keep]),
        student_versions=np.asarray([r["student_version"] for r in keep], dtype=object),
        teacher_versions={k: sorted(v) for k, v in versions.items()},
        dropped_no_teacher=len(rows) - len(keep),
    )
