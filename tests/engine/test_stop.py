"""The stop rule on crafted predictions and curves."""

from __future__ import annotations

import numpy as np

from distill_engine.job import StopSpec
from distill_engine.stop import (
    ceiling_checks,
    decide,
    probe_outcome,
    rising_at_end,
    slice_ceilings,
    training_verdict,
)


def _onehot(idx: np.ndarray, c: int = 3) -> np.ndarray:
    p = np.full((len(idx), c), 0.1 / (c - 1))
    p[np.arange(len(idx)), idx] = 0.9
    return p


def _run(curve: list[float], stopped_early: bool = False) -> dict[str, object]:
    return {"val_curve": curve, "stopped_early": stopped_early, "epochs_run": len(curve)}


def test_first_round_has_no_gain_check_and_counts_errors() -> None:
    y = np.arange(300) % 3
    student = y.copy()
    student[:30] = (y[:30] + 1) % 3
    gain, share = ceiling_checks(StopSpec(), _onehot(student), _onehot(y), y)
    assert not gain["triggered"] and gain["reference"] is None
    assert share["value"] == 0.0 and share["student_errors"] == 30 and not share["triggered"]


def test_gain_within_noise_triggers() -> None:
    y = np.arange(400) % 3
    student = y.copy()
    student[:40] = (y[:40] + 1) % 3  # accuracy 0.9, same as history
    gain, _ = ceiling_checks(StopSpec(history=[0.9]), _onehot(student), _onehot(y), y)
    assert gain["triggered"] and gain["ci"][0] <= 0 <= gain["ci"][1]


def test_clear_gain_against_previous_model_does_not_trigger() -> None:
    y = np.arange(600) % 3
    prev = y.copy()
    prev[:200] = (y[:200] + 1) % 3
    new = y.copy()
    new[:10] = (y[:10] + 2) % 3
    gain, _ = ceiling_checks(StopSpec(), _onehot(new), _onehot(y), y, previous_probs=_onehot(prev))
    assert not gain["triggered"] and gain["value"] > 0.3


def test_rising_curve_is_under_trained_and_plateau_is_not() -> None:
    spec = StopSpec()
    rising = [0.5, 0.6, 0.7, 0.75, 0.8, 0.84, 0.87, 0.9, 0.92, 0.94]
    verdict, evidence = training_verdict(spec, _run(rising), {"train_agreement": 0.9}, None)
    assert verdict == "under_trained" and evidence["training"]["gain_in_window"] >= 0.02
    flat = [0.5, 0.8, 0.9, 0.91, 0.91, 0.9, 0.91, 0.9, 0.91, 0.9]
    assert not rising_at_end(flat, False, spec.rising_delta)["rising"]
    assert training_verdict(spec, _run(flat), {"train_agreement": 0.99}, None)[0] == "converged"
    # A run that stopped on its own plateau was not cut short, however its last epochs look.
    assert not rising_at_end(rising, True, spec.rising_delta)["rising"]


def test_capacity_limited_needs_a_clearly_better_probe() -> None:
    spec = StopSpec()
    flat = [0.5, 0.6, 0.62, 0.62, 0.61, 0.62, 0.62, 0.61, 0.62, 0.62]
    fit = {"train_agreement": 0.62, "holdout_agreement": 0.6}
    better = probe_outcome(spec, fit, {"train_agreement": 0.8, "holdout_agreement": 0.78})
    assert better["clearly_better"] and abs(better["train_lead"] - 0.18) < 1e-9
    assert training_verdict(spec, _run(flat), fit, better)[0] == "capacity_limited"
    overfits = probe_outcome(spec, fit, {"train_agreement": 0.9, "holdout_agreement": 0.5})
    assert not overfits["clearly_better"]
    assert training_verdict(spec, _run(flat), fit, overfits)[0] == "converged"


def test_slice_ceiling_needs_rows_and_a_student_that_matches_the_right_teacher() -> None:
    y = np.arange(300) % 3
    teacher = y.copy()
    teacher[:15] = (y[:15] + 1) % 3  # teacher wrong on 15 rows of slice a
    student = teacher.copy()
    slices = np.array(["a"] * 150 + ["b"] * 150)
    student[150:190] = (y[150:190] + 2) % 3  # on b the student misses rows the teacher gets right
    out = slice_ceilings(StopSpec(), _onehot(student), _onehot(teacher), y, slices, {"a": 500, "b": 500})
    assert out["a"]["verdict"] == "ceiling_reached" and out["a"]["student_match_where_teacher_right"] == 1.0
    assert out["b"]["verdict"] == "room_left" and out["b"]["teacher_accuracy"] == 1.0
    few = slice_ceilings(StopSpec(), _onehot(student), _onehot(teacher), y, slices, {"a": 10, "b": 500})
    assert few["a"]["verdict"] == "too_few_rows"


def test_ceiling_verdict_only_when_converged_and_no_slice_is_open() -> None:
    triggered = [{"check": "gain", "triggered": True}]
    closed = {"a": {"verdict": "ceiling_reached"}}
    assert decide("converged", triggered, closed, {})["verdict"] == "ceiling_reached"
    assert decide("converged", triggered, {"a": {"verdict": "room_left"}}, {})["verdict"] == "converged"
    assert decide("converged", triggered, {"a": {"verdict": "too_few_rows"}}, {})["open_slices"] == ["a"]
    assert decide("under_trained", triggered, closed, {})["verdict"] == "under_trained"
    assert decide("converged", [{"check": "gain", "triggered": False}], closed, {})["verdict"] == "converged"
