"""Sampled rows waiting for a teacher batch in the shadow process, kept as columns.

Each part of a row (features, student probabilities, id, time, version, the request's own
slice) goes into its column when the worker receives the rows admission sent (`extend`, a
chunk at a time; shadow/offer.py, shadow/pipeline.py); everything derived from them (slice
labels from binning rules) is left to the worker. Features and probabilities are appended as raw
bytes (`tobytes`, a memcpy) to two byte buffers, and a batch turns them into arrays in one
step: cheap per chunk, and no long stall of the event loop when a batch is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = np.dtype(np.float64)  # as requests are parsed: the append is a plain copy
PROBS = np.dtype(np.float32)  # as the student answers


@dataclass
class Rows:
    x: np.ndarray  # [N, D] float32
    probs: np.ndarray  # [N, C] student probabilities, float32
    ids: list[str]
    at: list[float]
    versions: list[str]
    given: list[dict[str, str] | None]  # the request's `slice` object, as sent

    def __len__(self) -> int:
        return len(self.ids)


class WaitingRows:
    """A bounded FIFO of sampled rows; adding never waits (a full buffer refuses rows)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._x = bytearray()  # float64 features, row after row; the oldest first
        self._probs = bytearray()  # float32 probabilities, likewise
        self._width = 0  # features per row of the rows waiting
        self._classes = 0
        self._ids: list[str] = []
        self._at: list[float] = []
        self._versions: list[str] = []
        self._given: list[dict[str, str] | None] = []

    def __len__(self) -> int:
        return len(self._ids)

    def extend(self, rows: Rows) -> int:
        """Rows in bulk (`x`: [k, D], `probs`: [k, C]); how many were kept, the first ones: as many
        as there is room for, none when their width differs from the rows still waiting (a
        student with other inputs or classes was just activated: the old rows go first)."""
        x, probs, ids, at, versions, given = rows.x, rows.probs, rows.ids, rows.at, rows.versions, rows.given
        k = min(len(ids), self.capacity - len(self._ids))
        if k <= 0:
            return 0
        width, classes = x.shape[1], probs.shape[1]
        if width != self._width or classes != self._classes:
            if self._ids:
                return 0
            self._width, self._classes = width, classes
        self._x += np.ascontiguousarray(x[:k], FEATURES).tobytes()
        self._probs += np.ascontiguousarray(probs[:k], PROBS).tobytes()
        self._ids += ids[:k]
        self._at += at[:k]
        self._versions += versions[:k]
        self._given += given[:k]
        return k

    def take(self, n: int) -> Rows | None:
        """The oldest `n` rows (fewer if fewer wait), removed; None when none wait."""
        if not self._ids:
            return None
        n = min(n, len(self._ids))
        rows = Rows(
            x=_front(self._x, n * self._width, FEATURES).reshape(n, self._width),
            probs=_front(self._probs, n * self._classes, PROBS).reshape(n, self._classes),
            ids=self._ids[:n],
            at=self._at[:n],
            versions=self._versions[:n],
            given=self._given[:n],
        )
        for column in (self._ids, self._at, self._versions, self._given):
            del column[:n]
        return rows


def _front(buffer: bytearray, count: int, dtype: np.dtype) -> np.ndarray:
    """The first `count` values of `buffer` as float32, removed from it (a bytearray drops its
    front in O(1))."""
    values = np.frombuffer(buffer, dtype, count).astype(np.float32)  # a copy: the view goes first
    del buffer[: count * dtype.itemsize]
    return values
