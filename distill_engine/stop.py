"""The stop rule: is the student under-trained, capacity-limited, converged, or at its ceiling?

Training diagnosis, from the hold-out curve and an optional wider probe:
* under_trained — the hold-out score was still rising when the run hit its maximum epochs.
* capacity_limited — the run plateaued and a wider probe of the same family, trained a few
  epochs, fits the teacher clearly better on the training rows (without losing on the hold-out).
* converged — otherwise.

Ceiling checks (each reported with its numbers):
* gain — bootstrap CI of the eval improvement over the previous round (paired per row when
  the previous model's eval probabilities are given, else against the best historic value);
  triggered when the CI's lower end is at or below `min_gain`.
* teacher_wrong_share — of the student's eval errors (labels needed), the share the teacher
  also gets wrong; triggered at or above the threshold.
* per slice — `ceiling_reached` only when the slice had `min_slice_rows` training rows and
  the student already matches the teacher where the teacher is right (`capacity_agreement`);
  `too_few_rows` or `room_left` otherwise.
Verdict `ceiling_reached` when training converged, a ceiling check triggers and no slice has
room left or too few rows; otherwise the training diagnosis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .job import StopSpec
from .metrics import bootstrap_ci


def rising_at_end(curve: list[float], stopped_early: bool, delta: float) -> dict[str, Any]:
    """Was the hold-out score still rising when the run ended? With the numbers that say so."""
    n = len(curve)
    if n == 0:
        return {"rising": False, "note": "no hold-out curve"}
    window = max(2, int(np.ceil(0.2 * n)))
    before = curve[: n - window]
    reference = max(before) if before else curve[0]
    last = max(curve[n - window :]) if n > 1 else curve[0]
    best_at = int(np.argmax(curve)) + 1
    rising = (not stopped_early) and (n == 1 or (best_at > n - window and last - reference >= delta))
    return {
        "rising": bool(rising),
        "window_epochs": window,
        "score_before_window": reference,
        "best_in_window": last,
        "gain_in_window": last - reference,
        "threshold": delta,
    }


def training_verdict(
    spec: StopSpec, run: dict[str, Any], fit: dict[str, float], probe: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """`under_trained` | `capacity_limited` | `converged`, and the evidence behind it."""
    trend = rising_at_end(run.get("val_curve") or [], bool(run.get("stopped_early")), spec.rising_delta)
    evidence: dict[str, Any] = {"training": {**run, **trend}, "fit": fit, "probe": probe}
    if trend["rising"]:
        return "under_trained", evidence
    if probe is not None and probe.get("clearly_better"):
        return "capacity_limited", evidence
    return "converged", evidence


def probe_outcome(
    spec: StopSpec, student_fit: dict[str, float], probe_fit: dict[str, float]
) -> dict[str, Any]:
    """Compare the wider probe's fit with the student's: clearly better on train, not worse on hold-out."""
    lead = probe_fit["train_agreement"] - student_fit["train_agreement"]
    hold_lead = probe_fit.get("holdout_agreement", 0.0) - student_fit.get("holdout_agreement", 0.0)
    return {
        **probe_fit,
        "train_lead": lead,
        "holdout_lead": hold_lead,
        "margin": spec.probe_margin,
        "clearly_better": bool(lead >= spec.probe_margin and hold_lead >= -spec.probe_margin / 2),
    }


def ceiling_checks(
    spec: StopSpec,
    student_probs: np.ndarray,
    teacher_probs: np.ndarray,
    labels: np.ndarray | None,
    previous_probs: np.ndarray | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The gain and teacher_wrong_share checks on the eval set."""
    pred = student_probs.argmax(1)
    metric = "accuracy" if labels is not None else "agreement"
    target = labels if labels is not None else teacher_probs.argmax(1)
    score = (pred == target).astype(np.float64)
    gain: dict[str, Any] = {"check": "gain", "metric": metric, "threshold": spec.min_gain}
    if previous_probs is not None:
        diffs = score - (previous_probs.argmax(1) == target).astype(np.float64)
        est, lo, hi = bootstrap_ci(diffs, n_boot=spec.n_boot, seed=seed)
        gain.update(reference="previous_model", value=est, ci=[lo, hi], triggered=bool(lo <= spec.min_gain))
    elif spec.history:
        best = max(spec.history)
        est, lo, hi = bootstrap_ci(score, n_boot=spec.n_boot, seed=seed)
        gain.update(
            reference="history_best",
            best=best,
            value=est - best,
            ci=[lo - best, hi - best],
            triggered=bool(lo - best <= spec.min_gain),
        )
    else:
        gain.update(reference=None, value=None, ci=None, triggered=False, note="first round: no history")
    share: dict[str, Any] = {"check": "teacher_wrong_share", "threshold": spec.teacher_wrong_share}
    if labels is not None:
        wrong = pred != labels
        n_wrong = int(wrong.sum())
        value = float((teacher_probs.argmax(1)[wrong] != labels[wrong]).mean()) if n_wrong else 1.0
        share.update(value=value, student_errors=n_wrong, triggered=bool(value >= spec.teacher_wrong_share))
    else:
        share.update(value=None, triggered=False, note="eval set has no labels")
    return [gain, share]


def slice_ceilings(
    spec: StopSpec,
    student_probs: np.ndarray,
    teacher_probs: np.ndarray,
    labels: np.ndarray | None,
    slices: np.ndarray | None,
    train_rows: dict[str, int],
) -> dict[str, dict[str, Any]]:
    """Per eval slice: training rows, how well the student matches the teacher where it is right."""
    if slices is None:
        return {}
    pred, t_pred = student_probs.argmax(1), teacher_probs.argmax(1)
    out: dict[str, dict[str, Any]] = {}
    for s in sorted(np.unique(slices.astype(str))):
        m = slices.astype(str) == s
        right = m & (t_pred == labels) if labels is not None else m
        match = float((pred[right] == t_pred[right]).mean()) if right.any() else None
        rows = int(train_rows.get(s, 0))
        rec: dict[str, Any] = {
            "train_rows": rows,
            "eval_rows": int(m.sum()),
            "teacher_accuracy": float((t_pred[m] == labels[m]).mean()) if labels is not None else None,
            "student_agreement": float((pred[m] == t_pred[m]).mean()),
            "student_match_where_teacher_right": match,
            "threshold": spec.capacity_agreement,
            "min_train_rows": spec.min_slice_rows,
        }
        if rows < spec.min_slice_rows:
            rec["verdict"] = "too_few_rows"
        elif match is None or match >= spec.capacity_agreement:
            rec["verdict"] = "ceiling_reached"
        else:
            rec["verdict"] = "room_left"
        out[s] = rec
    return out


def decide(
    training: str, checks: list[dict[str, Any]], slices: dict[str, dict[str, Any]], evidence: dict[str, Any]
) -> dict[str, Any]:
    """The stop block of result.json."""
    open_slices = sorted(s for s, r in slices.items() if r["verdict"] != "ceiling_reached")
    ceiling = training == "converged" and any(c["triggered"] for c in checks) and not open_slices
    return {
        "verdict": "ceiling_reached" if ceiling else training,
        "training": training,
        "reasons": checks,
        "slices": slices,
        "open_slices": open_slices,
        "evidence": evidence,
    }
