"""Feature and probability vectors as stored: little-endian float32 bytes (BLOB / BYTEA).

Read back with `numpy.frombuffer`, without a parse step: a 1M-row window of 64 features was
mostly JSON parsing when rows were stored as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DTYPE = np.dtype("<f4")


def to_blob(values: Any) -> bytes:
    """One vector (array or list of numbers) as float32 bytes."""
    return np.ascontiguousarray(values, dtype=DTYPE).tobytes()


def to_blobs(matrix: Any) -> list[bytes]:
    """Each row of a [N, K] matrix as float32 bytes."""
    rows = np.ascontiguousarray(matrix, dtype=DTYPE)
    if rows.ndim != 2:
        rows = rows.reshape(len(rows), -1)
    step = rows.shape[1] * DTYPE.itemsize
    raw = rows.tobytes()
    return [raw[k : k + step] for k in range(0, len(raw), step)] if step else [b""] * len(rows)


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=DTYPE)


def from_blobs(blobs: Sequence[bytes], width: int) -> np.ndarray:
    """Rows of equal width (float32 each) as one [N, width] array: one join, one frombuffer."""
    if not blobs:
        return np.zeros((0, width), dtype=DTYPE)
    return np.frombuffer(b"".join(blobs), dtype=DTYPE).reshape(len(blobs), width)


def width(blob: bytes) -> int:
    """Values in one stored vector."""
    return len(blob) // DTYPE.itemsize
