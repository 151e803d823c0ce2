"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill_engine import metrics as M

P = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
Y = np.array([0, 1, 1])


def test_ece_single_row_bins() -> None:
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right) land in three different bins.
    assert M.ece(P, Y) == pytest.approx((0.1 + 0.6 + 0.3) / 3)


def test_ece_shared_bin() -> None:
    p = np.array([[0.95, 0.05], [0.96, 0.04]])
    assert M.ece(p, np.array([0, 1])) == pytest.approx(abs(0.5 - 0.955))


def test_adaptive_ece_equal_mass() -> None:
    assert M.ece_adaptive(P, Y, n_bins=1) == pytest.approx(abs(2 / 3 - (0.9 + 0.6 + 0.7) / 3))
    assert M.ece_adaptive(P, Y, n_bins=3) == pytest.approx(M.ece(P, Y))


def test_brier_nll_accuracy_agreement() -> None:
    assert M.brier(P, Y) == pytest.approx(((0.1**2 * 2) + (0.6**2 * 2) + (0.3**2 * 2)) / 3)
    assert M.nll(P, Y) == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7)) / 3)
    assert M.accuracy(P, Y) == pytest.approx(2 / 3)
    assert M.agreement(P, P[::-1]) == pytest.approx(1 / 3)


def test_summary_without_labels_scores_against_reference() -> None:
    s = M.summary(P, None, P)
    assert s["accuracy"] is None and s["agreement"] == 1.0 and s["ece"] is not None


def test_bootstrap_ci_brackets_mean_and_is_seeded() -> None:
    v = np.random.default_rng(0).normal(1.0, 1.0, 500)
    est, lo, hi = M.bootstrap_ci(v, seed=3)
    assert lo < est < hi and lo < 1.0 < hi
    assert M.bootstrap_ci(v, seed=3) == (est, lo, hi)


def test_softmax_temperature() -> None:
    z = np.array([[1.0, 0.0]])
    assert M.softmax(z, 2.0)[0, 0] == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 1))
