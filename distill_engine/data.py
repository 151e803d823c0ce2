"""Loading and validating the job's npz files.

Keys: `x` float32 [N, D] (required); `y` int [N] (-1 = unknown); `slice` str [N];
`weight` float [N]; `teacher_probs` [N, C] or `teacher_probs__<teacher>` per teacher;
`teacher_version` str [N] (versions of precomputed teacher outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import JobError


@dataclass
class Table:
    """One npz file, validated."""

    x: np.ndarray
    y: np.ndarray | None = None
    slices: np.ndarray | None = None
    weight: np.ndarray | None = None
    teacher_probs: np.ndarray | None = None
    teacher_probs_by_name: dict[str, np.ndarray] = field(default_factory=dict)
    teacher_version: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> np.ndarray:
        """Mask of rows with a known label."""
        return np.zeros(len(self), bool) if self.y is None else self.y >= 0


def load_table(path: Path, field_name: str) -> Table:
    """Read and check an npz; JobError names `field_name` (e.g. `data.train`) on any problem."""
    if not path.exists():
        raise JobError(field_name, f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise JobError(field_name, f"cannot read {path} as npz: {e}") from None
    if "x" not in arrays:
        raise JobError(field_name, f"{path.name} has no array 'x' (has {sorted(arrays)})")
    x = arrays["x"]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise JobError(f"{field_name}.x", f"must be a numeric [N, D] array, got {x.dtype} {x.shape}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise JobError(f"{field_name}.x", "contains NaN or infinite values")
    n = len(x)

    def vec(key: str) -> np.ndarray | None:
        a = arrays.get(key)
        if a is not None and a.shape[:1] != (n,):
            raise JobError(f"{field_name}.{key}", f"must have {n} rows like x, got shape {a.shape}")
        return a

    y = vec("y")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise JobError(f"{field_name}.y", f"must be integer class ids, got {y.dtype}")
        y = y.astype(np.int64).ravel()
    slices = vec("slice")
    weight = vec("weight")
    if weight is not None and (weight.ndim != 1 or (weight < 0).any() or not np.all(np.isfinite(weight))):
        raise JobError(f"{field_name}.weight", "must be a finite, non-negative [N] array")
    tv = vec("teacher_version")
    probs = {}
    for key, a in arrays.items():
        if key == "teacher_probs" or key.startswith("teacher_probs__"):
            a = vec(key)
            if a is None or a.ndim != 2 or (a < 0).any() or np.any(np.abs(a.sum(1) - 1) > 1e-3):
                raise JobError(f"{field_name}.{key}", "must be [N, C] probabilities (rows sum to 1)")
            probs[key] = a.astype(np.float64)
    return Table(
        x=x,
        y=y,
        slices=None if slices is None else slices.astype(str),
        weight=None if weight is None else weight.astype(np.float64),
        teacher_probs=probs.pop("teacher_probs", None),
        teacher_probs_by_name={k.removeprefix("teacher_probs__"): v for k, v in probs.items()},
        teacher_version=None if tv is None else tv.astype(str).astype(object),
    )
