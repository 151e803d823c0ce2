"""Training-pool curation: each step is a pure function and every step's count is reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .job import CurationSpec


@dataclass
class Curated:
    """Indices of kept rows (into the input pool), their weights, and per-step counts."""

    keep: np.ndarray
    weights: np.ndarray
    counts: dict[str, Any] = field(default_factory=dict)


def dedupe_indices(x: np.ndarray, tolerance: float) -> np.ndarray:
    """Indices of first occurrences after snapping rows to a grid of cell size `tolerance`.

    Grid hashing is O(N log N) (one sort); rows in the same cell are duplicates. Two rows
    closer than `tolerance` can straddle a cell border and both survive: the step is meant
    for repeated and near-repeated traffic, not as an exact epsilon-ball cover.
    """
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    grid = np.round(np.asarray(x, dtype=np.float64) / tolerance)
    grid = np.clip(grid, -(2.0**62), 2.0**62).astype(np.int64)
    _, first = np.unique(grid, axis=0, return_index=True)
    return np.sort(first)


def version_excluded(versions: np.ndarray, excluded: list[str]) -> np.ndarray:
    """Rows whose version string (or any `+`-joined part, or `name@version`) is excluded."""
    ex = set(excluded)
    out = np.zeros(len(versions), dtype=bool)
    for v in np.unique(versions.astype(str)):
        parts = set(v.split("+")) | {v}
        parts |= {p.split("@", 1)[1] for p in list(parts) if "@" in p}
        if parts & ex:
            out |= versions.astype(str) == v
    return out


def production_weights(
    pool: np.ndarray, production: np.ndarray, clip: tuple[float, float], seed: int = 0
) -> tuple[np.ndarray, dict[str, float]]:
    """Density ratio p_prod(x) / p_pool(x) from a logistic-regression domain classifier, clipped.

    w = P(prod|x) / P(pool|x) * n_pool / n_prod, clipped to `clip`, then rescaled to mean 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xa = np.concatenate([pool, production]).astype(np.float64)
    ya = np.concatenate([np.zeros(len(pool)), np.ones(len(production))])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
    clf.fit(xa, ya)
    p = np.clip(clf.predict_proba(pool.astype(np.float64))[:, 1], 1e-6, 1 - 1e-6)
    raw = p / (1 - p) * (len(pool) / len(production))
    clipped = int(((raw < clip[0]) | (raw > clip[1])).sum())
    w = np.clip(raw, clip[0], clip[1])
    w = w / w.mean()
    auc = float(roc_auc_score(ya, clf.predict_proba(xa)[:, 1]))
    ess = float(w.sum() ** 2 / (w**2).sum())
    return w, {
        "clipped": clipped,
        "min": float(w.min()),
        "max": float(w.max()),
        "ess": ess,
        "domain_auc": auc,
        "production_rows": len(production),
    }


def curate(
    x: np.ndarray,
    teacher_probs: np.ndarray,
    spec: CurationSpec,
    slices: np.ndarray | None = None,
    versions: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    production: np.ndarray | None = None,
    seed: int = 0,
) -> Curated:
    """Apply the curation steps in a fixed order; see docs/engine.md for the order and counts."""
    n = len(x)
    idx = np.arange(n)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    counts: dict[str, Any] = {"input": n}

    def drop(mask: np.ndarray, key: str) -> None:
        nonlocal idx
        counts[key] = int(mask.sum())
        idx = idx[~mask]

    zero_w = w[idx] <= 0
    drop(zero_w, "zero_weight")
    if slices is not None and spec.exclude_slices:
        drop(np.isin(slices[idx].astype(str), spec.exclude_slices), "excluded_slices")
    else:
        counts["excluded_slices"] = 0
    if versions is not None and spec.exclude_teacher_versions:
        drop(version_excluded(versions[idx], spec.exclude_teacher_versions), "excluded_teacher_versions")
    else:
        counts["excluded_teacher_versions"] = 0
    drop(teacher_probs[idx].max(axis=1) < spec.min_teacher_confidence, "low_confidence")
    if spec.dedupe:
        before = len(idx)
        idx = idx[dedupe_indices(x[idx], spec.dedupe_tolerance)]
        counts["duplicates"] = before - len(idx)
    else:
        counts["duplicates"] = 0
    upweighted = 0
    if slices is not None and spec.slice_weights:
        factor = np.ones(len(idx))
        s = slices[idx].astype(str)
        for name, f in spec.slice_weights.items():
            m = s == name
            factor[m] *= f
            upweighted += int(m.sum())
        w[idx] *= factor
    counts["reweighted_by_slice"] = upweighted
    if production is not None and len(idx):
        pw, info = production_weights(
            x[idx], production, spec.match_production.clip if spec.match_production else (0.1, 10.0), seed
        )
        w[idx] *= pw
        counts["production_match"] = info
    counts["kept"] = len(idx)
    return Curated(idx, w[idx], counts)
