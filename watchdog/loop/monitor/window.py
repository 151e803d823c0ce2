"""The current window of sampled rows as arrays: features, student and teacher probabilities, slices.

Read in chunks (`Store.sample_chunks`) into arrays sized once for the window, so memory is the
window's arrays plus one chunk, whatever the number of rows: about 4·(D + C) + 16·C + 40 bytes
per row (D features, C classes), e.g. 0.5 GB at 1M rows of 64 features and 10 classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from distill_watchdog.config import Settings
from distill_watchdog.store import SampleColumns, Store
from distill_watchdog.store.vectors import DTYPE, from_blobs


@dataclass
class Window:
    x: np.ndarray  # [N, D] float32
    student: np.ndarray  # [N, C]
    teacher: np.ndarray  # [N, C] weighted mix of the answering, unquarantined teachers
    labels: np.ndarray  # [N], -1 where no feedback label
    slice_codes: np.ndarray  # [N] index into slice_kinds
    slice_kinds: list[list[str]]  # each distinct set of "key=value" labels
    at: np.ndarray  # [N] sample times
    student_versions: np.ndarray
    teacher_versions: dict[str, list[str]] = field(default_factory=dict)
    dropped_no_teacher: int = 0

    def __len__(self) -> int:
        return len(self.x)

    @property
    def slices(self) -> list[list[str]]:
        """Per row, its labels (a list per row: for small windows and tests)."""
        return [list(self.slice_kinds[c]) for c in self.slice_codes]

    def codes_with(self, label: str) -> list[int]:
        return [c for c, kind in enumerate(self.slice_kinds) if label in kind]

    def mask(self, label: str) -> np.ndarray:
        return np.isin(self.slice_codes, self.codes_with(label))

    def slice_strings(self) -> np.ndarray:
        """One string per row (sorted labels joined by ','), for the engine's `slice` column."""
        names = np.asarray([",".join(sorted(s)) or "none" for s in self.slice_kinds] or ["none"])
        return names[self.slice_codes]

    def take(self, idx: np.ndarray) -> Window:
        """The rows at `idx`, in that order."""
        return Window(
            self.x[idx],
            self.student[idx],
            self.teacher[idx],
            self.labels[idx],
            self.slice_codes[idx],
            self.slice_kinds,
            self.at[idx],
            self.student_versions[idx],
            self.teacher_versions,
            self.dropped_no_teacher,
        )

    @property
    def nbytes(self) -> int:
        arrays = (self.x, self.student, self.teacher, self.labels, self.slice_codes, self.at)
        return sum(a.nbytes for a in arrays) + 8 * len(self.student_versions)


def load_window(
    store: Store,
    settings: Settings,
    limit: int | None = None,
    features: int | None = None,
    classes: int | None = None,
) -> Window:
    """The newest `monitor.window` rows (and within `monitor.window_s` when set); quarantine
    excluded; with `features`/`classes`, only rows of that many features and classes."""
    cfg = settings.monitor
    since = time.time() - cfg.window_s if cfg.window_s is not None else None
    weights = {t.name: t.weight for t in settings.teachers}
    return read_window(store, limit or cfg.window, weights, since, features, classes)


def read_window(
    store: Store,
    limit: int,
    weights: dict[str, float],
    since: float | None = None,
    features: int | None = None,
    classes: int | None = None,
    chunk: int | None = None,
) -> Window:
    """The newest `limit` unquarantined rows (at or after `since`), read chunk by chunk."""
    builder = WindowBuilder(limit, weights, features, classes)
    chunks = store.sample_chunks(limit, since=since, features=features, classes=classes, chunk=chunk)
    for part in chunks:
        builder.add(part)
    return builder.finish()


def window_from_columns(cols: SampleColumns, weights: dict[str, float]) -> Window:
    builder = WindowBuilder(len(cols.ids), weights)
    builder.add(cols)
    return builder.finish()


class WindowBuilder:
    """Fills arrays sized for `limit` rows chunk by chunk, then keeps the rows a teacher answered.

    Oldest first; each row's teacher distribution is the weighted mean of its usable answers
    (quarantined and failed ones skipped); rows with none are dropped and counted. Rows whose
    vectors are not `features`/`classes` wide (another model's) are skipped; unset, the newest
    row's widths decide.
    """

    def __init__(
        self, limit: int, weights: dict[str, float], features: int | None = None, classes: int | None = None
    ):
        self.limit, self.weights = limit, weights
        self.d, self.c = features, classes
        self.n = 0
        self.kinds: dict[str, int] = {}
        self.kind_labels: list[list[str]] = []
        self.version_of: dict[str, str] = {}
        self.seen_versions: dict[tuple[str, str], list[np.ndarray]] = {}

    def _allocate(self) -> None:
        n, d, c = self.limit, self.d or 0, self.c or 0
        # np.empty/np.zeros touch no memory until written: a window that is mostly empty costs little.
        self.x = np.empty((n, d), DTYPE)
        self.student = np.empty((n, c), DTYPE)
        self.mix = np.zeros((n, c))
        self.weight = np.zeros(n)
        self.at = np.empty(n)
        self.labels = np.empty(n, np.int64)
        self.codes = np.empty(n, np.int32)
        self.versions = np.empty(n, dtype=object)

    def _slice_code(self, text: str) -> int:
        code = self.kinds.get(text)
        if code is None:
            code = self.kinds[text] = len(self.kind_labels)
            self.kind_labels.append([f"{k}={v}" for k, v in sorted(orjson.loads(text).items())])
        return code

    def add(self, cols: SampleColumns) -> None:
        """Copies one chunk (newest first) into the arrays; rows beyond `limit` are ignored."""
        if not cols.ids:
            return
        if self.d is None or self.c is None:
            self.d = self.d or len(cols.features[0]) // DTYPE.itemsize
            self.c = self.c or len(cols.student_probs[0]) // DTYPE.itemsize
        if not hasattr(self, "x"):
            self._allocate()
        fb, cb = self.d * DTYPE.itemsize, self.c * DTYPE.itemsize
        rows = [
            i
            for i, (f, p) in enumerate(zip(cols.features, cols.student_probs, strict=True))
            if len(f) == fb and len(p) == cb
        ][: self.limit - self.n]
        if not rows:
            return
        start, m = self.n, len(rows)
        end = start + m
        self.x[start:end] = from_blobs([cols.features[i] for i in rows], self.d)
        self.student[start:end] = from_blobs([cols.student_probs[i] for i in rows], self.c)
        self.at[start:end] = [cols.at[i] for i in rows]
        self.labels[start:end] = [-1 if cols.labels[i] is None else cols.labels[i] for i in rows]
        self.codes[start:end] = [self._slice_code(cols.slices[i]) for i in rows]
        shared = self.version_of
        self.versions[start:end] = [shared.setdefault(v, v) for v in (cols.student_versions[i] for i in rows)]
        self._add_outputs(cols, rows, start, cb)
        self.n = end

    def _add_outputs(self, cols: SampleColumns, rows: list[int], start: int, cb: int) -> None:
        place = np.full(len(cols.ids), -1, np.int64)
        place[rows] = np.arange(start, start + len(rows))
        usable: dict[str, tuple[list[int], list[bytes]]] = {}
        versions: dict[tuple[str, str], list[int]] = {}
        for i, name, version, quarantined, probs in cols.outputs:
            j = place[i]
            if j < 0:
                continue
            if version:
                versions.setdefault((name, version), []).append(j)
            if not quarantined and probs is not None and len(probs) == cb:
                found = usable.setdefault(name, ([], []))
                found[0].append(j)
                found[1].append(probs)
        for key, index in versions.items():
            self.seen_versions.setdefault(key, []).append(np.asarray(index, np.int64))
        for name in sorted(usable):
            index, blobs = usable[name]
            w = self.weights.get(name, 1.0)
            at = np.asarray(index, np.int64)
            self.mix[at] += from_blobs(blobs, self.c) * w  # one answer per teacher and row
            self.weight[at] += w

    def finish(self) -> Window:
        n = self.n
        if n == 0:
            return _empty(0)
        keep = self.weight[:n] > 0
        dropped = n - int(keep.sum())
        if not keep.any():
            return _empty(dropped)
        kept = np.flatnonzero(keep)
        order = kept[np.argsort(self.at[kept], kind="stable")]  # oldest first
        teacher_versions: dict[str, set[str]] = {}
        for (name, version), parts in self.seen_versions.items():
            if any(keep[p].any() for p in parts):
                teacher_versions.setdefault(name, set()).add(version)
        return Window(
            x=self.x[order],
            student=self.student[order].astype(np.float64),
            teacher=self.mix[order] / self.weight[order, None],
            labels=self.labels[order],
            slice_codes=self.codes[order],
            slice_kinds=self.kind_labels,
            at=self.at[order],
            student_versions=self.versions[order],
            teacher_versions={k: sorted(v) for k, v in teacher_versions.items()},
            dropped_no_teacher=dropped,
        )


def _empty(dropped: int) -> Window:
    return Window(
        np.zeros((0, 0), np.float32),
        np.zeros((0, 0)),
        np.zeros((0, 0)),
        np.zeros(0, np.int64),
        np.zeros(0, np.int32),
        [],
        np.zeros(0),
        np.zeros(0, dtype=object),
        dropped_no_teacher=dropped,
    )
