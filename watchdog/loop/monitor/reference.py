"""The reference snapshot of the active student: the distribution it was trained on.

One npz per student version under `data_dir/references/`: `x` (a sample of the training
rows), optionally `teacher_probs` (the teachers' answers for them), and `pred` (that
student's classes on them). It is written at promotion from the run's training data; for
the first student it comes from `monitor.reference` (an npz with `x`, optional
`teacher_probs`). `pred` is filled in lazily, in the monitor's child process. With teacher
outputs, the snapshot is also replayed into the next redistillation's training rows, so
the new student keeps what the old one learned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill_watchdog.config import Settings
from distill_watchdog.registry import Registry

MAX_ROWS = 10_000


def reference_path(settings: Settings, version: str) -> Path:
    return settings.data_dir / "references" / f"{version}.npz"


def _subsample(n: int, seed: int = 0) -> np.ndarray:
    if n <= MAX_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_ROWS, replace=False))


def write_reference(
    settings: Settings, version: str, x: np.ndarray, teacher_probs: np.ndarray | None = None
) -> Path:
    keep = _subsample(len(x))
    arrays = {"x": np.asarray(x[keep], dtype=np.float32)}
    if teacher_probs is not None:
        arrays["teacher_probs"] = np.asarray(teacher_probs[keep], dtype=np.float64)
    path = reference_path(settings, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def _source(settings: Settings, version: str) -> Path | None:
    path = reference_path(settings, version)
    source = path if path.exists() else settings.monitor.reference
    return Path(source) if source is not None and Path(source).exists() else None


def replay_rows(settings: Settings, version: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, teacher_probs) of the snapshot when it carries teacher outputs, else None. Blocking."""
    source = _source(settings, version)
    if source is None:
        return None
    with np.load(source, allow_pickle=False) as data:
        if "teacher_probs" not in data:
            return None
        return np.asarray(data["x"], dtype=np.float32), np.asarray(data["teacher_probs"], dtype=np.float64)


def load_reference(
    settings: Settings, registry: Registry, version: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, predicted classes) for `version`, or None when no snapshot exists. Blocking."""
    path = reference_path(settings, version)
    source = _source(settings, version)
    if source is None:
        return None
    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "pred" not in arrays:
        keep = _subsample(len(arrays["x"]))
        arrays = {k: v[keep] for k, v in arrays.items()}
        arrays["x"] = np.asarray(arrays["x"], dtype=np.float32)
        arrays["pred"] = registry.load(version).predict_proba(arrays["x"]).argmax(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return np.asarray(arrays["x"], dtype=np.float32), np.asarray(arrays["pred"])
