"""Hypothesis properties of the metric code (distill_engine.metrics) and of the sampler's rates.

Metrics: bounds (ECE and adaptive ECE in [0, 1], Brier in [0, 2], NLL >= 0, agreement in
[0, 1]), invariance under a permutation of rows, and zero error for perfectly calibrated
one-hot predictions. Sampling: the request path's Bernoulli sampling (`RequestSampler.offer`)
samples nothing at rate 0, everything at rate 1, and otherwise a share within a binomial
interval of the configured (per-slice, per-bin) rate; at one rate, counted down, its gaps are
geometric whatever the request sizes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distill_engine import metrics as M

METRIC_SETTINGS = settings(max_examples=200, deadline=None)
Z = 5.5  # binomial interval half-width in standard deviations: a false alarm is ~1e-7 per draw

# --- strategies ---------------------------------------------------------------------------------


@st.composite
def predictions(draw: st.DrawFn, min_rows: int = 1, max_rows: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities [N, C] (logits in [-30, 30], so some rows are near one-hot) and labels [N]."""
    n = draw(st.integers(min_rows, max_rows))
    c = draw(st.integers(2, 12))
    logits = draw(arrays(np.float64, (n, c), elements=st.floats(-30, 30, allow_nan=False)))
    labels = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return M.softmax(logits), labels


@st.composite
def paired(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two models' probabilities over the same rows, and labels."""
    probs, labels = draw(predictions())
    other = draw(arrays(np.float64, probs.shape, elements=st.floats(-30, 30, allow_nan=False)))
    return probs, M.softmax(other), labels


permutation_seeds = st.integers(0, 2**32 - 1)
rates = st.floats(0.0, 1.0)


# --- metric bounds --------------------------------------------------------------------------------


@METRIC_SETTINGS
@given(predictions(), st.integers(1, 30))
def test_calibration_errors_are_within_0_and_1(pred: tuple[np.ndarray, np.ndarray], bins: int) -> None:
    probs, labels = pred
    assert 0.0 <= M.ece(probs, labels, bins) <= 1.0
    assert 0.0 <= M.ece_adaptive(probs, labels, bins) <= 1.0


@METRIC_SETTINGS
@given(predictions())
def test_brier_within_0_and_2_nll_nonnegative(pred: tuple[np.ndarray, np.ndarray]) -> None:
    probs, labels = pred
    assert 0.0 <= M.brier(probs, labels) <= 2.0 + 1e-12
    assert 0.0 <= M.nll(probs, labels) <= -math.log(1e-12) + 1e-9
    assert 0.0 <= M.accuracy(probs, labels) <= 1.0


@METRIC_SETTINGS
@given(paired())
def test_agreement_bounds_symmetry_identity(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    pa, pb, _ = pair
    assert M.agreement(pa, pa) == 1.0
    value = M.agreement(pa, pb)
    assert 0.0 <= value <= 1.0
    assert value == M.agreement(pb, pa)


@METRIC_SETTINGS
@given(predictions())
def test_kl_is_nonnegative_and_zero_on_itself(pred: tuple[np.ndarray, np.ndarray]) -> None:
    probs, _ = pred
    assert M.kl_divergence(probs, probs) == pytest.approx(0.0, abs=1e-9)
    shifted = M.softmax(np.log(np.clip(probs, 1e-12, 1)) + np.arange(probs.shape[1]))
    assert M.kl_divergence(probs, shifted) >= -1e-9


@METRIC_SETTINGS
@given(st.integers(1, 200), st.integers(2, 12), permutation_seeds)
def test_wrong_one_hot_brier_is_2_and_right_one_hot_is_0(n: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    right = np.eye(c)[labels]
    wrong = np.eye(c)[(labels + 1) % c]
    assert M.brier(right, labels) == 0.0
    assert M.brier(wrong, labels) == 2.0


# --- invariances ----------------------------------------------------------------------------------


@METRIC_SETTINGS
@given(paired(), permutation_seeds, st.integers(1, 30))
def test_metrics_do_not_depend_on_row_order(
    pair: tuple[np.ndarray, np.ndarray, np.ndarray], seed: int, bins: int
) -> None:
    probs, ref, labels = pair
    order = np.random.default_rng(seed).permutation(len(labels))
    p2, y2 = probs[order], labels[order]
    for fn in (M.brier, M.nll, M.accuracy):
        assert fn(p2, y2) == pytest.approx(fn(probs, labels), abs=1e-12)
    assert M.ece(p2, y2, bins) == pytest.approx(M.ece(probs, labels, bins), abs=1e-12)
    assert M.agreement(p2, ref[order]) == M.agreement(probs, ref)
    assert M.kl_divergence(p2, ref[order]) == pytest.approx(M.kl_divergence(probs, ref), abs=1e-9)


@METRIC_SETTINGS
@given(predictions(), permutation_seeds, st.integers(1, 30))
def test_adaptive_ece_does_not_depend_on_row_order_when_confidences_differ(
    pred: tuple[np.ndarray, np.ndarray], seed: int, bins: int
) -> None:
    """Equal-mass bins split ties by position, so the property holds for distinct confidences."""
    probs, labels = pred
    # Spread the top probabilities apart (hypothesis likes repeated values), then renormalize.
    top = probs.argmax(axis=1)
    probs = probs.copy()
    probs[np.arange(len(top)), top] += (np.arange(len(top)) + 1) * 1e-3
    probs /= probs.sum(axis=1, keepdims=True)
    conf = probs.max(axis=1)
    assume(len(np.unique(conf)) == len(conf))
    order = np.random.default_rng(seed).permutation(len(labels))
    assert M.ece_adaptive(probs[order], labels[order], bins) == pytest.approx(
        M.ece_adaptive(probs, labels, bins), abs=1e-12
    )


@pytest.mark.xfail(
    strict=True,
    reason="found here: equal-mass bins split tied confidences by row position "
    "(distill_engine.metrics.ece_adaptive sorts by confidence only)",
)
def test_adaptive_ece_with_tied_confidences_is_order_free() -> None:
    probs = np.array([[0.5, 0.5], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([1, 0, 1])
    order = [0, 2, 1]  # swaps the two rows of confidence 0.6 (one right, one wrong)
    assert M.ece_adaptive(probs[order], labels[order], 2) == pytest.approx(M.ece_adaptive(probs, labels, 2))


@METRIC_SETTINGS
@given(st.integers(1, 300), st.integers(2, 12), st.integers(1, 30), permutation_seeds)
def test_perfectly_calibrated_one_hot_has_zero_error(n: int, c: int, bins: int, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, c, n)
    probs = np.eye(c)[labels]
    assert M.ece(probs, labels, bins) == 0.0
    assert M.ece_adaptive(probs, labels, bins) == 0.0
    assert M.brier(probs, labels) == 0.0
    assert M.nll(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert M.accuracy(probs, labels) == 1.0


@METRIC_SETTINGS
@given(st.integers(2, 12), st.integers(1, 10), st.integers(1, 30))
def test_calibrated_by_construction_has_zero_ece(c: int, k: int, bins: int) -> None:
    """A bin whose confidence equals its accuracy contributes nothing: 1/k confidence, 1 right in k."""
    assume(k <= c)
    conf = 1.0 / k
    probs = np.zeros((k, c))
    probs[:, :k] = conf  # ties: argmax is class 0 for every row
    labels = np.arange(k)  # exactly one row (the first) is right
    assert M.ece(probs, labels, bins) == pytest.approx(0.0, abs=1e-12)


# --- sampler rates --------------------------------------------------------------------------------


@dataclass
class _Request:
    x: np.ndarray
    slice: dict[str, str] | None
    ids: list[str]


def _service(rate: float, per_slice: dict[str, float] | None = None, bins: list[dict[str, Any]] | None = None,
             rows: int = 1) -> Any:  # fmt: skip
    from distill_watchdog.config import load_settings
    from distill_watchdog.shadow import RequestSampler
    from distill_watchdog.shadow.waiting import WaitingRows

    settings_ = load_settings(
        None,
        sampling={"rate": rate, "per_slice": per_slice or {}, "queue_size": max(rows, 1)},
        slices={"keys": ["region"], "bins": bins or []},
    )
    service = RequestSampler(settings_, WaitingRows(max(rows, 1)))
    service.running = True  # what start() sets; nothing drains the rows here
    service.waiting = service.sink
    return service


def _offer(service: Any, x: np.ndarray, slice_: dict[str, str] | None, seed: int) -> int:
    service.draw = random.Random(seed).random  # offer's own draw, seeded: a failure replays
    service.offer(_Request(x, slice_, [str(i) for i in range(len(x))]), np.full((len(x), 2), 0.5), "v1")
    service.admit()  # what admission does
    return len(service.waiting)


def _within_binomial(k: int, n: int, p: float) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(k - n * p) <= Z * sd + 1


@settings(max_examples=60, deadline=None)
@given(rates, st.integers(1, 5000), permutation_seeds)
def test_sampled_share_is_within_a_binomial_interval_of_the_rate(rate: float, n: int, seed: int) -> None:
    x = np.zeros((n, 3), dtype=np.float32)
    k = _offer(_service(rate, rows=n), x, None, seed)
    assert _within_binomial(k, n, rate), (k, n, rate)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2000), permutation_seeds, st.sampled_from([0.0, 1.0]))
def test_rate_0_samples_nothing_rate_1_everything(n: int, seed: int, rate: float) -> None:
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    service = _service(rate, rows=n)
    assert _offer(service, x, {"region": "eu"}, seed) == (n if rate else 0)


@settings(max_examples=40, deadline=None)
@given(rates, rates, st.integers(200, 4000), permutation_seeds)
def test_per_slice_rate_applies_to_its_slice_only(base: float, eu: float, n: int, seed: int) -> None:
    """`sampling.per_slice["region=eu"]` overrides the base rate for that slice; others keep the base."""
    x = np.zeros((n, 3), dtype=np.float32)
    service = _service(base, {"region=eu": eu}, rows=n)
    assert service.rules.rates(x, {"region": "eu"}) == eu
    assert service.rules.rates(x, {"region": "us"}) == base
    k_eu = _offer(service, x, {"region": "eu"}, seed)
    assert _within_binomial(k_eu, n, eu), (k_eu, n, eu)
    other = _service(base, {"region=eu": eu}, rows=n)
    k_us = _offer(other, x, {"region": "us"}, seed + 1)
    assert _within_binomial(k_us, n, base), (k_us, n, base)
    if eu == 0 and base == 0:
        assert k_eu == k_us == 0


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(400, 4000), permutation_seeds
)
def test_feature_bin_rates_apply_per_row(base: float, low: float, high: float, n: int, seed: int) -> None:
    """A binning rule gives each row its bin's rate; rows are drawn independently."""
    bins = [{"name": "amount", "feature": 0, "edges": [0.0]}]  # bins "<0" and ">=0"
    service = _service(base, {"amount=<0": low, "amount=>=0": high}, bins, rows=n)
    x = np.zeros((n, 3), dtype=np.float32)
    x[: n // 2, 0] = -1.0
    rates = service.rules.rates(x, None)
    assert np.all(rates[: n // 2] == low) and np.all(rates[n // 2 :] == high)
    _offer(service, x, None, seed)
    waiting = service.waiting.take(len(service.waiting))
    sampled = [] if waiting is None else [int(i) for i in waiting.ids]  # the test's ids are row indexes
    k_low = sum(1 for i in sampled if i < n // 2)
    assert _within_binomial(k_low, n // 2, low), (k_low, n // 2, low)
    assert _within_binomial(len(sampled) - k_low, n - n // 2, high), (len(sampled) - k_low, high)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.dictionaries(
        st.sampled_from(["region=eu", "region=us", "region=ap", "tier=gold"]), st.floats(0.0, 1.0)
    ),
    st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["region", "tier"]), st.sampled_from(["eu", "us", "gold"]))
    ),
)
def test_row_rate_is_the_largest_matching_slice_rate_else_the_base(
    base: float, per_slice: dict[str, float], given_slice: dict[str, str] | None
) -> None:
    service = _service(base, per_slice)
    x = np.zeros((4, 3), dtype=np.float32)
    # Only configured keys (slices.keys = ["region"]) count.
    matching = [per_slice[f"region={v}"] for k, v in (given_slice or {}).items()
                if k == "region" and f"region={v}" in per_slice]  # fmt: skip
    expected = max(matching) if matching else base
    assert service.rules.rates(x, given_slice) == expected


def _sampled_rows(service: Any, sizes: list[int], seed: int) -> list[int]:
    """Offers requests of `sizes` rows in turn, each admitted as admission would (from the second
    request on, `offer` takes the gaps the admissions drew ahead); the sampled rows' positions in
    the whole stream."""
    service.draw = random.Random(seed).random
    start = 0
    for n in sizes:
        ids = [str(start + i) for i in range(n)]
        service.offer(_Request(np.zeros((n, 3), dtype=np.float32), None, ids), np.full((n, 2), 0.5), "v1")
        service.admit()
        start += n
    waiting = service.waiting.take(len(service.waiting))
    return [] if waiting is None else [int(i) for i in waiting.ids]


@settings(max_examples=25, deadline=None)
@given(st.floats(0.002, 0.9), st.lists(st.integers(1, 40), min_size=1, max_size=3), permutation_seeds)
def test_rows_at_one_rate_are_sampled_independently_whatever_the_request_sizes(
    rate: float, pattern: list[int], seed: int
) -> None:
    """At one rate for every row `offer` counts down the rows between two sampled ones instead of
    drawing for each. The sample must still be Bernoulli per row, across requests of any size:
    the share within a binomial interval, and the gaps between sampled rows geometric (a
    chi-square test over the gap lengths)."""
    from scipy import stats

    sizes = pattern * (20_000 // sum(pattern))  # about 20,000 rows
    n = sum(sizes)
    rows = _sampled_rows(_service(rate, rows=n), sizes, seed)
    assert rows == sorted(set(rows)) and all(0 <= r < n for r in rows)
    assert _within_binomial(len(rows), n, rate), (len(rows), n, rate)
    gaps = np.diff([-1, *rows])  # rows from one sampled row to the next: geometric, from 1
    assume(len(gaps) >= 200)
    edges = np.unique(stats.geom.ppf(np.arange(1, 10) / 10, rate))  # up to ten classes of about equal mass
    observed = np.bincount(np.searchsorted(edges, gaps), minlength=len(edges) + 1)
    expected = len(gaps) * np.diff([0.0, *stats.geom.cdf(edges, rate), 1.0])
    assert stats.chisquare(observed, expected).pvalue > 1e-6, (observed, expected.round(1))


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_one_row_requests_at_rate_0_give_nothing_at_rate_1_every_row(rate: float) -> None:
    rows = _sampled_rows(_service(rate, rows=3000), [1] * 1000 + [7] * 100 + [1] * 1000, seed=11)
    assert rows == (list(range(2700)) if rate else [])


def test_the_count_down_carries_over_from_one_request_to_the_next() -> None:
    """The same stream of draws gives the same sampled rows however the rows are split into
    requests: what is left of a gap passes to the next request, and gaps drawn ahead are used
    in the order drawn."""
    sizes = np.random.default_rng(5).integers(1, 9, 3000).tolist()
    n = sum(sizes)
    whole = _sampled_rows(_service(0.05, rows=n), [n], seed=3)
    split = _sampled_rows(_service(0.05, rows=n), sizes, seed=3)
    assert whole == split and len(whole) > 100
