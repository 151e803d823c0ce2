"""The ceiling rule: should the daemon keep redistilling, or has this setup stopped paying?

Checks, each reported with its numbers:
* gain — bootstrap CI of the eval improvement over the previous round (paired per row when
  the previous model's eval probabilities are given, else against the best historic value);
  triggered when the CI's lower end is at or below `min_gain` (the gain is within noise).
* teacher_wrong_share — of the student's remaining eval errors (labels needed), the share
  the teacher also gets wrong; triggered at or above the threshold (nothing left to learn).
* capacity — student/teacher agreement on training rows vs eval rows; a student that
  cannot fit the teacher even on its training rows (below the threshold) is capacity-bound.
  It explains a ceiling but does not trigger one alone.
Verdict `ceiling_reached` when gain or teacher_wrong_share triggers, else `continue`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .job import StopSpec
from .metrics import bootstrap_ci


def stop_verdict(
    spec: StopSpec,
    student_probs: np.ndarray,
    teacher_probs: np.ndarray,
    labels: np.ndarray | None,
    train_agreement: float,
    previous_probs: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Verdict and reasons for one round, from eval-set predictions and the round history."""
    pred = student_probs.argmax(1)
    t_pred = teacher_probs.argmax(1)
    metric = "accuracy" if labels is not None else "agreement"
    target = labels if labels is not None else t_pred
    score = (pred == target).astype(np.float64)
    reasons: list[dict[str, Any]] = []

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
    reasons.append(gain)

    share: dict[str, Any] = {"check": "teacher_wrong_share", "threshold": spec.teacher_wrong_share}
    if labels is not None:
        wrong = pred != labels
        n_wrong = int(wrong.sum())
        value = float((t_pred[wrong] != labels[wrong]).mean()) if n_wrong else 1.0
        share.update(value=value, student_errors=n_wrong, triggered=bool(value >= spec.teacher_wrong_share))
    else:
        share.update(value=None, triggered=False, note="eval set has no labels")
    reasons.append(share)

    eval_agree = float((pred == t_pred).mean()) if len(pred) else float("nan")
    reasons.append(
        {
            "check": "capacity",
            "train_agreement": train_agreement,
            "eval_agreement": eval_agree,
            "gap": train_agreement - eval_agree,
            "threshold": spec.capacity_agreement,
            "capacity_limited": bool(train_agreement < spec.capacity_agreement),
            "triggered": False,
        }
    )
    verdict = "ceiling_reached" if any(r["triggered"] for r in reasons) else "continue"
    return {"verdict": verdict, "reasons": reasons}
