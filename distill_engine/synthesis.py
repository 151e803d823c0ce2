"""Teacher-labelled synthesis for slices: generate near the slice's rows, label, filter hard.

Generators work inside one slice and keep candidates inside that slice's per-feature range
(jitter is clipped; SMOTE and mixup are convex combinations of slice rows; user generators
are clipped). Candidates are labelled by the teachers (ensemble and specialist rules as for
real rows, batched, each call bounded by the teacher's `timeout_s`), then filtered: teacher
confidence, duplicates of real or earlier synthetic rows, production matching, and the
`max_ratio` cap. Seeds are training rows only, and synthetic rows join training only.

Production matching compares each slice's candidates with that slice's own seed rows: a weak
slice is a small share of the whole production sample, so matching against all of it would
drop the very rows the slice needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .curation import dedupe_indices, production_weights
from .ensemble import route
from .errors import JobError, TeacherError
from .job import DistillJob, SynthesisSpec
from .teachers import Teacher, predict_all
from .zoo import resolve_factory


def jitter(x: np.ndarray, n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise scaled per feature by the slice's own spread."""
    base = x[rng.integers(0, len(x), n)]
    return base + rng.normal(size=base.shape) * (scale * x.std(0))


def smote(x: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A point on the segment between a row and one of its k nearest same-slice neighbours.
    Neighbours come from a tree, once per slice row: memory grows with rows x k, not with
    candidates x rows."""
    from sklearn.neighbors import NearestNeighbors

    if len(x) < 2:
        return x[np.zeros(n, dtype=np.int64)]
    k = min(k, len(x) - 1)
    pick = rng.integers(0, len(x), n)
    _, nearest = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    nearest = nearest[:, 1:]  # each row's first neighbour is itself (or an exact duplicate)
    other = nearest[pick, rng.integers(0, k, n)]
    u = rng.uniform(size=(n, 1))
    return x[pick] + u * (x[other] - x[pick])


def mixup(x: np.ndarray, n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """A Beta-weighted mix of two random rows of the slice."""
    a, b = x[rng.integers(0, len(x), n)], x[rng.integers(0, len(x), n)]
    lam = rng.beta(alpha, alpha, size=(n, 1))
    return lam * a + (1 - lam) * b


def shift(x: np.ndarray, donors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A row from outside the seeds, moved by the difference between the seeds' mean and the
    donors' mean: what changed, carried onto the many rows the slice did not send. A
    covariate shift (a feature moved) is carried exactly; other changes in their mean only,
    with the teacher's labels and the filters to judge the result."""
    return donors[rng.integers(0, len(donors), n)] - donors.mean(0) + x.mean(0)


def generate(
    x: np.ndarray,
    spec: SynthesisSpec,
    rng: np.random.Generator,
    user: Callable[..., Any] | None = None,
    donors: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Candidates for one slice's rows, clipped into the slice's feature ranges; counts per
    generator. `donors`: training rows outside the seeds, for `shift` (skipped without)."""
    total = min(int(round(spec.candidates_per_row * len(x))), spec.max_candidates)
    kinds: list[str] = [*spec.generators, *(["user"] if user is not None else [])]
    if donors is None or len(donors) == 0:
        kinds = [k for k in kinds if k != "shift"]
    if not kinds or total == 0 or len(x) == 0:
        return np.zeros((0, x.shape[1]), np.float32), {}
    shares = np.diff(np.linspace(0, total, len(kinds) + 1).round().astype(int))
    made, counts = [], {}
    for kind, n in zip(kinds, shares, strict=True):
        if kind == "jitter":
            out = jitter(x, n, spec.jitter_scale, rng)
        elif kind == "smote":
            out = smote(x, n, spec.neighbours, rng)
        elif kind == "mixup":
            out = mixup(x, n, spec.mixup_alpha, rng)
        elif kind == "shift":
            assert donors is not None
            out = shift(x, donors, n, rng)
        else:
            assert user is not None
            out = np.asarray(user(x=x.copy(), n=int(n), rng=rng), dtype=np.float64).reshape(-1, x.shape[1])
        made.append(out)
        counts[kind] = len(out)
    cand = np.clip(np.concatenate(made), x.min(0), x.max(0)).astype(np.float32)
    return cand, counts


def label(
    job: DistillJob, adapters: dict[str, Teacher], x: np.ndarray, slices: np.ndarray | None
) -> tuple[np.ndarray, int]:
    """Teacher probabilities for candidates (same ensemble rules as real rows) and the calls made."""
    if not adapters:
        raise JobError("synthesis", "needs teachers to label the candidates (the job lists none)")
    per, calls = {}, 0
    for spec in job.teachers:
        out, _ = predict_all(adapters[spec.name], x)
        per[spec.name] = out.probs
        calls += -(-len(x) // spec.batch_size)
    combined, _ = route(per, job.teachers, slices, job.loss.ensemble)
    return combined, calls


@dataclass
class Synthetic:
    """Kept synthetic rows (training only) and what happened on the way, per slice."""

    x: np.ndarray
    probs: np.ndarray
    weights: np.ndarray
    slices: np.ndarray | None
    counts: dict[str, Any] = field(default_factory=dict)
    teacher_calls: int = 0

    def __len__(self) -> int:
        return len(self.x)


def _per_slice(names: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    return {str(s): int((mask & (names == s)).sum()) for s in np.unique(names)}


def _seeds(
    job: DistillJob, x: np.ndarray, slices: np.ndarray | None, weights: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Each wanted slice's seed rows (a mask): its training rows, those of weight >= `min_seed_weight`."""
    spec = job.synthesis
    names = np.full(len(x), "*", dtype=object) if slices is None else slices.astype(str).astype(object)
    heavy = np.ones(len(x), bool)
    if weights is not None and spec.min_seed_weight > 0:
        heavy = weights >= spec.min_seed_weight
    wanted = spec.slices or sorted(set(names.tolist()))
    return {str(name): (names == name) & heavy for name in wanted}


MAX_DONORS = 20_000  # rows the shift generator draws from (and averages)


def _candidates(
    job: DistillJob, x: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
    """Each slice's candidates from its seed rows (`masks` over `x`); `shift` draws from the rest."""
    spec = job.synthesis
    user = resolve_factory(spec.generator, "synthesis.generator") if spec.generator else None
    width = x.shape[1]
    made, tags, counts = [], [], {}
    for name, mask in masks.items():
        rows = x[mask].astype(np.float64)
        outside = np.flatnonzero(~mask)
        if len(outside) > MAX_DONORS:
            outside = np.sort(rng.choice(outside, MAX_DONORS, replace=False))
        donors = x[outside].astype(np.float64)
        cand, by_gen = (
            generate(rows, spec, rng, user, donors) if len(rows) >= 2 else (np.zeros((0, width)), {})
        )
        counts[name] = {"real_rows": int(len(rows)), "generated": int(len(cand)), "by_generator": by_gen}
        made.append(cand.astype(np.float32))
        tags.append(np.full(len(cand), name, dtype=object))
    if not made:
        return np.zeros((0, width), np.float32), np.zeros(0, dtype=object), counts
    return np.concatenate(made), np.concatenate(tags), counts


def _unlike_production(
    job: DistillJob,
    cand: np.ndarray,
    tags: np.ndarray,
    keep: np.ndarray,
    x: np.ndarray,
    masks: dict[str, np.ndarray],
    matching: bool,
    seed: int,
) -> np.ndarray:
    """Candidates the production-matching weights (against their slice's own seed rows) put
    below `min_production_weight`; none when the job does not match production."""
    far = np.zeros(len(cand), bool)
    if not matching:
        return far
    clip = job.curation.match_production.clip if job.curation.match_production else (0.1, 10.0)
    for name, mask in masks.items():
        mine = np.flatnonzero(keep & (tags == name))
        if len(mine) < 2 or int(mask.sum()) < 2:
            continue
        w, _ = production_weights(cand[mine], x[mask].astype(np.float64), clip, seed)
        far[mine[w < job.synthesis.min_production_weight]] = True
    return far


def synthesize(
    job: DistillJob,
    adapters: dict[str, Teacher],
    x: np.ndarray,
    slices: np.ndarray | None,
    production: np.ndarray | None,
    seed: int,
    weights: np.ndarray | None = None,
) -> Synthetic:
    """Generate, label and filter synthetic rows from the training rows `x` (never hold-out rows);
    `weights`: the rows' own data weights, for `min_seed_weight`."""
    spec, rng = job.synthesis, np.random.default_rng(seed + 33)
    masks = _seeds(job, x, slices, weights)
    cand, tags, counts = _candidates(job, x, masks, rng)
    empty = Synthetic(np.zeros((0, x.shape[1]), np.float32), np.zeros((0, 0)), np.zeros(0), None, counts)
    if not len(cand):
        return empty
    try:
        probs, calls = label(job, adapters, cand, None if slices is None else tags.astype(str))
    except TeacherError as e:
        empty.counts = {**counts, "error": f"teachers failed, no synthetic rows: {e}"}
        return empty
    keep = probs.max(1) >= max(spec.min_teacher_confidence, job.curation.min_teacher_confidence)
    steps = {"low_confidence": ~keep}
    dup = np.zeros(len(cand), bool)
    if job.curation.dedupe:
        pool = np.concatenate([x, cand[keep]])
        first = dedupe_indices(pool, job.curation.dedupe_tolerance)
        survivors = np.flatnonzero(keep)[first[first >= len(x)] - len(x)]
        dup = keep.copy()
        dup[survivors] = False
        keep &= ~dup
    steps["duplicates"] = dup
    far = _unlike_production(job, cand, tags, keep, x, masks, production is not None, seed)
    keep &= ~far
    steps["unlike_production"] = far
    capped = np.zeros(len(cand), bool)
    for name, rec in counts.items():
        idx = rng.permutation(np.flatnonzero(keep & (tags == name)))
        capped[idx[int(spec.max_ratio * rec["real_rows"]) :]] = True
    keep &= ~capped
    steps["over_max_ratio"] = capped
    for step, mask in steps.items():
        for name, n in _per_slice(tags, mask).items():
            counts[name][step] = n
    for name, n in _per_slice(tags, keep).items():
        counts[name]["kept"] = n
    out_slices = None if slices is None else tags[keep].astype(str)
    weights = np.full(int(keep.sum()), spec.weight)
    return Synthetic(cand[keep], probs[keep], weights, out_slices, counts, calls)
