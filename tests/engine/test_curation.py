"""Each curation step on crafted data, with its count."""

from __future__ import annotations

import numpy as np
import pytest

from distill_engine.curation import curate, dedupe_indices, production_weights
from distill_engine.job import CurationSpec


def _probs(conf: list[float]) -> np.ndarray:
    c = np.asarray(conf)
    return np.stack([c, 1 - c], axis=1)


def test_min_confidence_drops_uncertain_rows() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    cur = curate(x, _probs([0.9, 0.55, 0.99, 0.6]), CurationSpec(min_teacher_confidence=0.7, dedupe=False))
    assert cur.keep.tolist() == [0, 2]
    assert cur.counts["low_confidence"] == 2 and cur.counts["kept"] == 2


def test_dedupe_with_tolerance() -> None:
    x = np.array([[0.0, 0.0], [0.0, 1e-7], [1.0, 1.0], [1.0 + 4e-3, 1.0], [5.0, 5.0]], dtype=np.float32)
    assert dedupe_indices(x, 1e-6).tolist() == [0, 2, 3, 4]
    assert dedupe_indices(x, 1e-2).tolist() == [0, 2, 4]
    cur = curate(x, _probs([0.9] * 5), CurationSpec(dedupe=True, dedupe_tolerance=1e-2))
    assert cur.counts["duplicates"] == 2


def test_dedupe_scales_to_many_rows() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(100_000, 8))
    exact = np.concatenate([base, base[:20_000]])
    assert len(dedupe_indices(exact, 1e-6)) == 100_000
    # Near repeats: grid hashing misses only the few that straddle a cell border.
    near = np.concatenate([base, base[:20_000] + 1e-9])
    assert 100_000 <= len(dedupe_indices(near, 1e-6)) < 100_000 + 20_000 * 0.02


def test_exclude_slices_and_versions() -> None:
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    slices = np.array(["a", "b", "a", "c", "b"])
    versions = np.array(["t@v1", "t@v2", "t@v1", "t@v3", "t@v2+u@v9"], dtype=object)
    spec = CurationSpec(dedupe=False, exclude_slices=["c"], exclude_teacher_versions=["v2"])
    cur = curate(x, _probs([0.9] * 5), spec, slices=slices, versions=versions)
    assert cur.keep.tolist() == [0, 2]
    assert cur.counts["excluded_slices"] == 1 and cur.counts["excluded_teacher_versions"] == 2


def test_slice_weights_upweight_weak_slices() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    cur = curate(
        x,
        _probs([0.9] * 4),
        CurationSpec(dedupe=False, slice_weights={"weak": 3.0}),
        slices=np.array(["ok", "weak", "ok", "weak"]),
        weights=np.array([1.0, 1.0, 2.0, 0.5]),
    )
    assert cur.weights.tolist() == [1.0, 3.0, 2.0, 1.5]
    assert cur.counts["reweighted_by_slice"] == 2


def test_zero_weight_rows_are_dropped() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    cur = curate(x, _probs([0.9] * 3), CurationSpec(dedupe=False), weights=np.array([1.0, 0.0, 1.0]))
    assert cur.keep.tolist() == [0, 2] and cur.counts["zero_weight"] == 1


def test_production_matching_upweights_rows_like_production() -> None:
    rng = np.random.default_rng(0)
    pool = rng.normal(0, 1, size=(2000, 2))
    prod = rng.normal(1.0, 1, size=(1000, 2))
    w, info = production_weights(pool, prod, (0.1, 10.0))
    near = pool[:, 0] > 1.0
    far = pool[:, 0] < -1.0
    assert w[near].mean() > 2 * w[far].mean()
    assert w.min() >= 0.1 / 10 and np.mean(w) == pytest.approx(1.0)
    assert info["domain_auc"] > 0.6 and 0 < info["ess"] < len(pool)
    # Weighted pool mean moves toward the production mean.
    assert np.average(pool[:, 0], weights=w) > 0.5


def test_production_matching_clips() -> None:
    rng = np.random.default_rng(1)
    pool = rng.normal(0, 1, size=(1000, 1))
    prod = rng.normal(3.0, 0.5, size=(1000, 1))
    w, info = production_weights(pool, prod, (0.5, 2.0))
    assert info["clipped"] > 0
    ratio = w.max() / w.min()
    assert ratio == pytest.approx(4.0, rel=1e-6)
