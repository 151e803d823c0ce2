"""The distillation loss and schedules against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distill_engine.loss import kd_loss, kd_weight_at


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_kd_loss_matches_hand_computation() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    y = torch.tensor([0, -1])  # second row has no label: teacher term only
    t, a = 2.0, 0.6
    # softmax(log p / 2) = sqrt(p) normalised: [2/3, 1/3] and [1/2, 1/2].
    kl1 = _kl([2 / 3, 1 / 3], _softmax([0.5, 0.0]))
    kl2 = _kl([0.5, 0.5], _softmax([0.0, 1.0]))
    ce1 = -math.log(_softmax([1.0, 0.0])[0])
    expected = ((a * t * t * kl1 + (1 - a) * ce1) + (t * t * kl2)) / 2
    assert float(kd_loss(z, p, y, t, a)) == pytest.approx(expected, rel=1e-6)


def test_row_weights_give_weighted_mean() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    rows = [float(kd_loss(z[i : i + 1], p[i : i + 1], None, 1.0, 1.0)) for i in range(2)]
    w = torch.tensor([3.0, 1.0])
    assert float(kd_loss(z, p, None, 1.0, 1.0, w)) == pytest.approx((3 * rows[0] + rows[1]) / 4, rel=1e-6)


def test_labels_only_is_cross_entropy() -> None:
    z = torch.tensor([[2.0, 0.5, -1.0]])
    y = torch.tensor([1])
    assert float(kd_loss(z, None, y, 4.0, 0.0)) == pytest.approx(-math.log(_softmax([2.0, 0.5, -1.0])[1]))


def test_kd_weight_zero_ignores_teacher_on_labelled_rows() -> None:
    z = torch.tensor([[2.0, 0.5]])
    y = torch.tensor([0])
    a = kd_loss(z, torch.tensor([[0.1, 0.9]]), y, 3.0, 0.0)
    b = kd_loss(z, torch.tensor([[0.9, 0.1]]), y, 3.0, 0.0)
    assert float(a) == pytest.approx(float(b))


def test_teacher_equal_to_student_gives_zero_kd() -> None:
    z = torch.tensor([[0.3, -1.2, 2.0]])
    p = torch.softmax(z, dim=1)
    assert float(kd_loss(z, p, None, 3.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_missing_teacher_for_unlabelled_rows_is_an_error() -> None:
    with pytest.raises(ValueError):
        kd_loss(torch.zeros(1, 2), None, torch.tensor([-1]), 1.0, 0.5)


def test_schedules() -> None:
    assert kd_weight_at(0.7, 0.9, None, "constant") == 0.9
    assert kd_weight_at(0.0, 0.9, None, "linear") == pytest.approx(0.9)
    assert kd_weight_at(1.0, 0.9, None, "linear") == pytest.approx(0.1)  # default end = 1 - start
    assert kd_weight_at(0.5, 0.9, 0.5, "linear") == pytest.approx(0.7)
    assert kd_weight_at(0.0, 1.0, 0.0, "cosine") == pytest.approx(1.0)
    assert kd_weight_at(0.5, 1.0, 0.0, "cosine") == pytest.approx(0.5)
    assert kd_weight_at(1.0, 1.0, 0.0, "cosine") == pytest.approx(0.0)
    assert kd_weight_at(0.25, 1.0, 0.0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
