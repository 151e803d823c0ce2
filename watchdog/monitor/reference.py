"""The reference snapshot of the active student: the distribution it was trained on.

One npz per student version under `data_dir/references/`: `x` (a sample of the training
rows) and `pred` (that student's classes on them). It is written at promotion from the
run's training data; for the first student it comes from `monitor.reference` (an npz with
`x`). `pred` is filled in lazily, in the monitor's child process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Settings
from ..registry import Registry

MAX_ROWS = 5000


def reference_path(settings: Settings, version: str) -> Path:
    return settings.data_dir / "references" / f"{version}.npz"


def write_reference(settings: Settings, version: str, x: np.ndarray, seed: int = 0) -> Path:
    if len(x) > MAX_ROWS:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), MAX_ROWS, replace=False))]
    path = reference_path(settings, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=np.asarray(x, dtype=np.float32))
    tmp.replace(path)
    return path


def load_reference(
    settings: Settings, registry: Registry, version: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, predicted classes) for `version`, or None when no snapshot exists. Blocking."""
    path = reference_path(settings, version)
    source = path if path.exists() else settings.monitor.reference
    if source is None or not Path(source).exists():
        return None
    with np.load(source, allow_pickle=False) as data:
        x = np.asarray(data["x"], dtype=np.float32)
        pred = np.asarray(data["pred"]) if "pred" in data and source == path else None
    if pred is None:
        if len(x) > MAX_ROWS:
            x = x[np.sort(np.random.default_rng(0).choice(len(x), MAX_ROWS, replace=False))]
        pred = registry.load(version).predict_proba(x).argmax(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, pred=pred)
        tmp.replace(path)
    return x, pred
