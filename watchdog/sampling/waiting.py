"""Sampled rows waiting for a teacher batch, kept as columns from the moment they are offered.

Each part of a row (features, student probabilities, id, time, version, the request's own
slice) goes into its column when the row is sampled, a microsecond or two on the request that
sampled it; everything derived from them (slice labels from binning rules) is left to the
worker. Features and probabilities are copied into two ring buffers, so a batch is a few list
slices and two array slices. Gathering 256 separate rows into arrays at batch time (np.stack,
even np.concatenate) held the event loop for 0.2 to 0.5 ms at once, several times a second,
which the requests in flight at that moment paid for; the copy costs each sampled request
1 to 2 µs instead (bench/sampler_steps.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

FIRST_ROWS = 512  # the buffers start this big and double up to the capacity as rows pile up


@dataclass
class Rows:
    x: np.ndarray  # [N, D] float32
    probs: np.ndarray  # [N, C] student probabilities
    ids: list[str]
    at: list[float]
    versions: list[str]
    given: list[dict[str, str] | None]  # the request's `slice` object, as sent

    def __len__(self) -> int:
        return len(self.ids)


class WaitingRows:
    """A bounded FIFO of sampled rows; `add` never waits (a full buffer refuses the row)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._x: np.ndarray | None = None  # ring of [size, D] float32; the oldest row at _head
        self._probs: np.ndarray | None = None  # ring of [size, C] float32
        self._head = 0
        self._ids: list[str] = []
        self._at: list[float] = []
        self._versions: list[str] = []
        self._given: list[dict[str, str] | None] = []
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ids)

    def add(
        self,
        x: np.ndarray,
        probs: np.ndarray,
        row_id: str,
        at: float,
        version: str,
        given: dict[str, str] | None,
    ) -> bool:
        """`x` [1, D] and `probs` [1, C], one row each; False (nothing kept) when it cannot wait.

        A row is refused when the buffer is full, and when its width differs from the rows
        still waiting (a student with other inputs or classes was just activated): the old
        rows go first.
        """
        n = len(self._ids)
        if n >= self.capacity:
            return False
        ring, probs_ring = self._x, self._probs
        if (
            ring is None
            or probs_ring is None
            or n == len(ring)
            or ring.shape[1] != x.shape[-1]
            or probs_ring.shape[1] != probs.shape[-1]
        ):
            if not self._make_room(x.shape[-1], probs.shape[-1]):
                return False
            ring, probs_ring = self._x, self._probs
            assert ring is not None and probs_ring is not None
        i = (self._head + n) % len(ring)
        ring[i] = x
        probs_ring[i] = probs
        self._ids.append(row_id)
        self._at.append(at)
        self._versions.append(version)
        self._given.append(given)
        self._ready.set()
        return True

    def _make_room(self, width: int, classes: int) -> bool:
        """Grows the rings (or starts them for rows of a new width); False if rows of another width wait."""
        n = len(self._ids)
        ring, probs_ring = self._x, self._probs
        if ring is None or probs_ring is None or ring.shape[1] != width or probs_ring.shape[1] != classes:
            if n:
                return False
            size = 0
        else:
            size = len(ring)
        grown = min(self.capacity, max(FIRST_ROWS, 2 * size))
        new_ring = np.empty((grown, width), np.float32)
        new_probs = np.empty((grown, classes), np.float32)
        if n and ring is not None and probs_ring is not None:
            new_ring[:n] = self._oldest(ring, n)
            new_probs[:n] = self._oldest(probs_ring, n)
        self._x, self._probs, self._head = new_ring, new_probs, 0
        return True

    def _oldest(self, ring: np.ndarray, n: int) -> np.ndarray:
        """A copy of the oldest `n` rows of `ring`, in order."""
        start, size = self._head, len(ring)
        if start + n <= size:
            return ring[start : start + n].copy()
        return np.concatenate((ring[start:], ring[: start + n - size]))

    async def wait(self) -> None:
        """Until at least one row waits."""
        await self._ready.wait()

    def take(self, n: int) -> Rows | None:
        """The oldest `n` rows (fewer if fewer wait), removed; None when none wait."""
        if not self._ids or self._x is None or self._probs is None:
            return None
        n = min(n, len(self._ids))
        rows = Rows(
            x=self._oldest(self._x, n),
            probs=self._oldest(self._probs, n),
            ids=self._ids[:n],
            at=self._at[:n],
            versions=self._versions[:n],
            given=self._given[:n],
        )
        self._head = (self._head + n) % len(self._x)
        for column in (self._ids, self._at, self._versions, self._given):
            del column[:n]
        if not self._ids:
            self._ready.clear()
        return rows
