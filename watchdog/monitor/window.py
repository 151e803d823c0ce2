"""The current window of sampled rows as arrays: features, student and teacher probabilities, slices."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..config import Settings
from ..store import SampleColumns, Store
from ..store.vectors import from_blobs, width


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


def _matrix(blobs: list[bytes]) -> np.ndarray:
    """Stored float32 vectors of one width as one [N, width] array (no parse step)."""
    return from_blobs(blobs, width(blobs[0]) if blobs else 0)


def load_window(store: Store, settings: Settings, limit: int | None = None) -> Window:
    """The newest `monitor.window` rows (and within `monitor.window_s` when set); quarantine excluded."""
    cfg = settings.monitor
    since = time.time() - cfg.window_s if cfg.window_s is not None else None
    cols = store.sample_columns(limit or cfg.window, since=since)
    return window_from_columns(cols, {t.name: t.weight for t in settings.teachers})


def window_from_columns(cols: SampleColumns, weights: dict[str, float]) -> Window:
    """Oldest first; each row's teacher distribution is the weighted mean of its usable answers
    (quarantined and failed ones skipped); rows with none are dropped and counted."""
    n = len(cols.ids)
    usable: dict[str, list[tuple[int, str]]] = {}
    for i, name, _, quarantined, probs in cols.outputs:
        if not quarantined and probs is not None:
            usable.setdefault(name, []).append((i, probs))
    mix_total: np.ndarray | None = None
    weight_total = np.zeros(n)
    answered = np.zeros(n, dtype=bool)
    for name in sorted(usable):
        rows = usable[name]
        index = np.fromiter((i for i, _ in rows), dtype=np.int64, count=len(rows))
        probs = _matrix([p for _, p in rows]).astype(np.float64)
        w = weights.get(name, 1.0)
        if mix_total is None:
            mix_total = np.zeros((n, probs.shape[1]))
        np.add.at(mix_total, index, probs * w)
        np.add.at(weight_total, index, w)
        answered[index] = True
    keep = answered & (weight_total > 0)
    dropped = n - int(keep.sum())
    if mix_total is None or not keep.any():
        return Window(
            np.zeros((0, 0), np.float32),
            np.zeros((0, 0)),
            np.zeros((0, 0)),
            np.zeros(0, np.int64),
            [],
            np.zeros(0),
            np.zeros(0, dtype=object),
            dropped_no_teacher=n,
        )
    at = np.asarray(cols.at, dtype=np.float64)
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(at[kept], kind="stable")]  # oldest first
    rows_in_order = order.tolist()
    versions: dict[str, set[str]] = {}
    for i, name, version, _, _ in cols.outputs:
        if version and keep[i]:
            versions.setdefault(name, set()).add(version)
    labelled: dict[str, list[str]] = {}
    slices = []
    for i in rows_in_order:
        text = cols.slices[i]
        found = labelled.get(text)
        if found is None:
            found = labelled[text] = [f"{k}={v}" for k, v in sorted(orjson.loads(text).items())]
        slices.append(list(found))
    labels = [cols.labels[i] for i in rows_in_order]
    return Window(
        x=_matrix([cols.features[i] for i in rows_in_order]),
        student=_matrix([cols.student_probs[i] for i in rows_in_order]).astype(np.float64),
        teacher=mix_total[order] / weight_total[order, None],
        labels=np.asarray([-1 if label is None else int(label) for label in labels], dtype=np.int64),
        slices=slices,
        at=at[order],
        student_versions=np.asarray([cols.student_versions[i] for i in rows_in_order], dtype=object),
        teacher_versions={k: sorted(v) for k, v in versions.items()},
        dropped_no_teacher=dropped,
    )
