"""The run's hold-out: drawn at random from the recent rows, stratified by slice and by time.

The newest rows are where a change shows first, so holding out the newest share of rows would
hold out most of a freshly shifted slice and leave none of it to train on. Instead each
stratum (the row's slices x a quarter of the recent rows' time span) gives `share` of its rows
at random, and every weak slice is then topped up so that both sides hold at least the
configured minimum of its recent rows. Older rows always train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIME_BINS = 4


class WaitingForData(ValueError):
    """A weak slice has too few recent rows to train on and to judge on: wait for more."""

    def __init__(self, counts: dict[str, int], need: int) -> None:
        self.counts = counts
        self.need = need
        short = ", ".join(f"{k}: {v}" for k, v in counts.items())
        super().__init__(f"waiting for data: weak-slice rows {short}; need {need} each")


@dataclass
class Split:
    train: np.ndarray  # indices, ascending
    hold: np.ndarray  # indices, ascending
    weak_counts: dict[str, dict[str, int]]  # per weak slice: recent rows on each side


def _time_bins(at: np.ndarray, bins: int = TIME_BINS) -> np.ndarray:
    if len(at) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(at, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, at, side="right")


def _draw(strata: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Positions held out: `share` of each stratum at random (fractions rounded at random)."""
    held: list[np.ndarray] = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        want = len(members) * share
        k = int(want) + int(rng.random() < want - int(want))
        held.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.concatenate(held) if held else np.zeros(0, dtype=np.int64)


def _move(src: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(np.flatnonzero(src), size=k, replace=False) if k > 0 else np.zeros(0, dtype=np.int64)


def split(
    at: np.ndarray,
    slice_strings: np.ndarray,
    recent: np.ndarray,
    weak: dict[str, np.ndarray],
    share: float,
    min_train: int,
    min_hold: int,
    seed: int = 0,
) -> Split:
    """Train/hold-out indices; raises WaitingForData when a weak slice cannot fill both sides."""
    rng = np.random.default_rng(seed)
    recent_idx = np.flatnonzero(recent)
    have = {label: int((m & recent).sum()) for label, m in weak.items()}
    short = {label: n for label, n in have.items() if n < min_train + min_hold}
    if short:
        raise WaitingForData(short, min_train + min_hold)
    strata = np.char.add(
        slice_strings[recent_idx].astype(str), _time_bins(at[recent_idx]).astype(str).astype("<U2")
    )
    hold = np.zeros(len(at), dtype=bool)
    hold[recent_idx[_draw(strata, share, rng)]] = True
    counts: dict[str, dict[str, int]] = {}
    for label, m in weak.items():
        mine = m & recent
        n_hold = int((mine & hold).sum())
        hold[_move(mine & ~hold, min_hold - n_hold, rng)] = True
        n_train = int((mine & ~hold).sum())
        hold[_move(mine & hold, min_train - n_train, rng)] = False
        counts[label] = {"train": int((mine & ~hold).sum()), "holdout": int((mine & hold).sum())}
    return Split(np.flatnonzero(~hold), np.flatnonzero(hold), counts)
