"""The current window of sampled rows as arrays: features, student and teacher probabilities, slices.

Read in chunks (`Store.sample_chunks`) into arrays sized once for the window, so memory is the
window's arrays plus one chunk, whatever the number of rows: about 4·D + 28·C + 40 bytes per
row (D features, C classes), e.g. 0.6 GB at 1M rows of 64 features and 10 classes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import orjson

from distill_watchdog.config import Settings
from distill_watchdog.store import SampleColumns, Store
from distill_watchdog.store.vectors import DTYPE, from_blobs

K = TypeVar("K", bound=Hashable)


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
    with _no_cycle_collection():
        for part in _read_ahead(chunks):
            builder.add(part)
    return builder.finish()


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector paused while a window is read: the driver's rows (millions of
    tuples, none in a cycle) set it off every few hundred rows, and each pass walked the live
    ones again, which was most of a million-row read's CPU. Reference counting frees them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _read_ahead(chunks: Iterator[SampleColumns]) -> Iterator[SampleColumns]:
    """`chunks`, the next one read in a thread while the caller copies the one before: the
    database's own work (SQLite's steps run without the GIL; PostgreSQL's server) overlaps it."""
    with ThreadPoolExecutor(1, thread_name_prefix="window-read") as pool:
        pending = pool.submit(next, chunks, None)
        while (part := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield part


def window_from_columns(cols: SampleColumns, weights: dict[str, float]) -> Window:
    builder = WindowBuilder(len(cols.ids), weights)
    builder.add(cols)
    return builder.finish()


class WindowBuilder:
    """Fills arrays sized for `limit` rows chunk by chunk, then keeps the rows a teacher answered.

    Rows arrive newest first and are written from the arrays' end backwards, so a window read in
    time order is already oldest first: its arrays are handed over without a reordering copy.
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

    def _codes(self, texts: list[str]) -> np.ndarray:
        """Each slice text's code (a new code per text not seen before), without a call per row."""
        kinds = self.kinds
        for text in set(texts).difference(kinds):
            kinds[text] = len(self.kind_labels)
            self.kind_labels.append([f"{k}={v}" for k, v in sorted(orjson.loads(text).items())])
        return np.fromiter(map(kinds.__getitem__, texts), np.int32, len(texts))

    def _shared(self, versions: list[str]) -> list[str]:
        """The versions with one string object per distinct value (a million rows share a few)."""
        shared = self.version_of
        for v in set(versions).difference(shared):
            shared[v] = v
        return list(map(shared.__getitem__, versions))

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
        n = len(cols.ids)
        fits = (_sizes(cols.features) == fb) & (_sizes(cols.student_probs) == cb)
        rows = np.flatnonzero(fits)[: self.limit - self.n]
        if not len(rows):
            return
        every = len(rows) == n

        def pick(values: list) -> list:  # type: ignore[type-arg]
            return values if every else [values[i] for i in rows]

        # the chunk's rows, newest first, fill slots [first, last) from the end backwards
        last = self.limit - self.n
        first = last - len(rows)
        back = slice(None, None, -1)
        self.x[first:last] = from_blobs(pick(cols.features), self.d)[back]
        self.student[first:last] = from_blobs(pick(cols.student_probs), self.c)[back]
        self.at[first:last] = pick(cols.at)[back]
        labels = np.array(pick(cols.labels)[back], np.float64)  # None -> NaN
        self.labels[first:last] = np.where(np.isnan(labels), -1, labels)
        self.codes[first:last] = self._codes(pick(cols.slices)[back])
        self.versions[first:last] = self._shared(pick(cols.student_versions)[back])
        place = np.full(n, -1, np.int64)
        place[rows] = np.arange(last - 1, first - 1, -1)
        self._add_outputs(cols, place, cb)
        self.n += len(rows)

    def _add_outputs(self, cols: SampleColumns, place: np.ndarray, cb: int) -> None:
        """Adds each answer to its row's weighted mix, per teacher, and notes the versions seen."""
        if not cols.outputs:
            return
        sample_ids, names, versions, quarantined, probs = zip(*cols.outputs, strict=True)
        ids = np.asarray(cols.ids, np.int64)
        by_id = np.argsort(ids)
        found = by_id[np.searchsorted(ids, np.asarray(sample_ids, np.int64), sorter=by_id)]
        at = place[found]  # each answer's place in the window, -1 for rows not taken
        taken = at >= 0
        usable = taken & ~np.asarray(quarantined, bool) & (_sizes([p or b"" for p in probs]) == cb)
        teacher, called = _factor(names), _factor(versions)
        width = len(called.labels)
        pair = teacher.codes * width + called.codes
        for code in np.unique(pair[taken]):
            name, version = teacher.labels[code // width], called.labels[code % width]
            if version:
                self.seen_versions.setdefault((name, version), []).append(at[taken & (pair == code)])
        for code in np.argsort(teacher.labels):  # teachers in name order, as the sums always were
            index = np.flatnonzero(usable & (teacher.codes == code))
            if not len(index):
                continue
            w = self.weights.get(teacher.labels[code], 1.0)
            rows = at[index]
            # one answer per teacher and row: no index repeats within one assignment
            self.mix[rows] += from_blobs([probs[i] for i in index], self.c) * w
            self.weight[rows] += w

    def finish(self) -> Window:
        n, first = self.n, self.limit - self.n
        if n == 0:
            return _empty(0)
        keep = self.weight > 0  # every slot; those never filled hold no weight
        dropped = n - int(keep.sum())
        if dropped == n:
            return _empty(dropped)
        at = self.at[first:]
        if dropped == 0 and bool(np.all(at[1:] > at[:-1])):
            order: slice | np.ndarray = slice(first, None)  # already oldest first: views, no copy
        else:  # oldest first; rows of one time in the order they came (newest key first)
            kept = first + np.flatnonzero(keep[first:])
            order = kept[np.lexsort((-kept, self.at[kept]))]
        teacher_versions: dict[str, set[str]] = {}
        for (name, version), parts in self.seen_versions.items():
            if any(keep[p].any() for p in parts):
                teacher_versions.setdefault(name, set()).add(version)
        weight = self.weight[order]
        return Window(
            x=self.x[order],
            student=self.student[order].astype(np.float64),
            teacher=self.mix[order] / weight[:, None],
            labels=self.labels[order],
            slice_codes=self.codes[order],
            slice_kinds=self.kind_labels,
            at=self.at[order],
            student_versions=self.versions[order],
            teacher_versions={k: sorted(v) for k, v in teacher_versions.items()},
            dropped_no_teacher=dropped,
        )


def _sizes(blobs: Sequence[bytes]) -> np.ndarray:
    return np.fromiter(map(len, blobs), np.int64, len(blobs))


@dataclass
class _Factor(Generic[K]):
    codes: np.ndarray  # per value, its index in `labels`
    labels: list[K]


def _factor(values: Sequence[K]) -> _Factor[K]:
    """Distinct values and each value's code: a dict pass, for the few teachers of many rows."""
    index: dict[K, int] = {}
    for v in set(values):
        index[v] = len(index)
    labels = list(index)
    return _Factor(np.fromiter(map(index.__getitem__, values), np.int64, len(values)), labels)


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
