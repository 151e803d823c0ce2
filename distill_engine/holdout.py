"""The engine's hold-out: a stratified share of the curated rows, never trained on.

Stratifying by class (and slice, when rows have one) keeps every class and slice on both
sides, so early stopping and the temperature see the mix the student is trained on.
"""

from __future__ import annotations

import numpy as np


def stratified_split(
    strata: np.ndarray, share: float, min_rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions `(fit, hold)`: `max(min_rows, share * n)` rows (at most half), spread over strata.

    Each stratum gets its share by largest remainder, then rows are drawn at random inside it.
    """
    n = len(strata)
    n_hold = min(max(int(round(share * n)), min_rows), n // 2)
    if n_hold <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keys, inverse = np.unique(np.asarray(strata).astype(str), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(keys))
    quota = sizes * (n_hold / n)
    take = np.floor(quota).astype(np.int64)
    rest = n_hold - int(take.sum())
    if rest > 0:
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:rest]] += 1
    hold = [
        rng.permutation(np.flatnonzero(inverse == g))[: int(take[g])] for g in range(len(keys)) if take[g]
    ]
    hold_pos = np.sort(np.concatenate(hold)) if hold else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[hold_pos] = False
    return np.flatnonzero(mask), hold_pos


def strata_of(classes: np.ndarray, slices: np.ndarray | None) -> np.ndarray:
    """One stratum per (class, slice) pair; class alone when rows have no slice."""
    c = np.asarray(classes).astype(str)
    return c if slices is None else np.char.add(np.char.add(c, "|"), np.asarray(slices).astype(str))
