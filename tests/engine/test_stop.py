"""The ceiling rule on crafted predictions."""

from __future__ import annotations

import numpy as np

from distill_engine.job import StopSpec
from distill_engine.stop import stop_verdict


def _onehot(idx: np.ndarray, c: int = 3) -> np.ndarray:
    p = np.full((len(idx), c), 0.1 / (c - 1))
    p[np.arange(len(idx)), idx] = 0.9
    return p


def test_first_round_continues_with_numbers() -> None:
    y = np.arange(300) % 3
    student = y.copy()
    student[:30] = (y[:30] + 1) % 3
    v = stop_verdict(StopSpec(), _onehot(student), _onehot(y), y, train_agreement=0.99)
    assert v["verdict"] == "continue"
    share = next(r for r in v["reasons"] if r["check"] == "teacher_wrong_share")
    assert share["value"] == 0.0 and share["student_errors"] == 30


def test_gain_within_noise_reaches_ceiling() -> None:
    y = np.arange(400) % 3
    student = y.copy()
    student[:40] = (y[:40] + 1) % 3  # accuracy 0.9, same as history
    v = stop_verdict(StopSpec(history=[0.9]), _onehot(student), _onehot(y), y, train_agreement=0.99)
    gain = v["reasons"][0]
    assert gain["triggered"] and gain["ci"][0] <= 0 <= gain["ci"][1]
    assert v["verdict"] == "ceiling_reached"


def test_clear_gain_against_previous_model_continues() -> None:
    y = np.arange(600) % 3
    prev = y.copy()
    prev[:200] = (y[:200] + 1) % 3
    new = y.copy()
    new[:10] = (y[:10] + 2) % 3  # a few errors the teacher does not make
    v = stop_verdict(StopSpec(), _onehot(new), _onehot(y), y, 0.99, previous_probs=_onehot(prev))
    assert not v["reasons"][0]["triggered"] and v["reasons"][0]["value"] > 0.3
    assert v["verdict"] == "continue"


def test_errors_shared_with_teacher_reach_ceiling() -> None:
    y = np.arange(300) % 3
    wrong = (y + 1) % 3
    teacher = y.copy()
    teacher[:30] = wrong[:30]
    student = teacher.copy()  # every student error is a teacher error
    v = stop_verdict(StopSpec(), _onehot(student), _onehot(teacher), y, train_agreement=0.90)
    share = v["reasons"][1]
    assert share["value"] == 1.0 and share["triggered"]
    cap = v["reasons"][2]
    assert cap["capacity_limited"] and cap["train_agreement"] == 0.90
    assert v["verdict"] == "ceiling_reached"
