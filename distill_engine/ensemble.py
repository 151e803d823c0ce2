"""Combining several teachers: weighted ensembles and per-slice specialists.

`probs` mode averages probabilities with the teachers' weights (an arithmetic mixture,
which keeps every teacher's uncertainty). `logits` mode averages log-probabilities and
re-normalises (a weighted geometric mean, i.e. averaging logits up to a constant), which is
sharper where teachers agree. Specialists: a teacher with `slices` teaches only rows of
those slices (several such teachers are ensembled); every other row falls back to the
ensemble of the generalist teachers, or of all teachers when every teacher is a specialist.
"""

from __future__ import annotations

import numpy as np

from .job import TeacherSpec


def combine(probs: list[np.ndarray], weights: list[float], mode: str = "probs") -> np.ndarray:
    """Weighted ensemble of `[N, C]` probability arrays."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    if mode == "probs":
        return np.einsum("t,tnc->nc", w, np.stack(probs))
    if mode == "logits":
        z = np.einsum("t,tnc->nc", w, np.log(np.clip(np.stack(probs), 1e-12, 1.0)))
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown ensemble mode {mode!r}")


def route(
    probs: dict[str, np.ndarray], specs: list[TeacherSpec], slices: np.ndarray | None, mode: str = "probs"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row teacher probabilities and the source of each row ("ensemble" or teacher names)."""
    names = [s.name for s in specs if s.name in probs]
    by_name = {s.name: s for s in specs}
    general = [n for n in names if not by_name[n].slices] or names
    out = combine([probs[n] for n in general], [by_name[n].weight for n in general], mode)
    n_rows = len(out)
    source = np.full(n_rows, "ensemble" if len(general) > 1 else general[0], dtype=object)
    if slices is None:
        return out, source
    s = np.asarray(slices).astype(str)
    for value in np.unique(s):
        experts = [n for n in names if value in by_name[n].slices]
        if not experts:
            continue
        m = s == value
        out[m] = combine([probs[n][m] for n in experts], [by_name[n].weight for n in experts], mode)
        source[m] = "+".join(experts)
    return out, source
