"""Temperature scaling fixes an over-confident model and leaves its accuracy alone."""

from __future__ import annotations

import numpy as np

from distill_engine import metrics as M
from distill_engine.calibration import apply_temperature, fit_temperature


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose calibrated temperature is 3: labels sampled from softmax(z / 3)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4.0, size=(n, 5))
    p_true = M.softmax(z, 3.0)
    y = np.array([rng.choice(5, p=p) for p in p_true])
    return z, y


def test_temperature_lowers_ece_and_keeps_accuracy() -> None:
    z_fit, y_fit = _overconfident(3000, 0)
    z_ev, y_ev = _overconfident(3000, 1)
    t = fit_temperature(z_fit, y_fit)
    assert 2.5 < t < 3.5
    before, after = M.softmax(z_ev), apply_temperature(z_ev, t)
    assert M.ece(after, y_ev) < 0.5 * M.ece(before, y_ev)
    assert M.nll(after, y_ev) < M.nll(before, y_ev)
    assert M.accuracy(after, y_ev) == M.accuracy(before, y_ev)


def test_soft_targets() -> None:
    z = np.random.default_rng(0).normal(0, 3, size=(500, 4))
    t = fit_temperature(z * 2.0, M.softmax(z))
    assert abs(t - 2.0) < 0.01
