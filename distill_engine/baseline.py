"""The label-only baseline: the student's architecture trained on labels alone (the floor KD must beat)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .calibration import fit_temperature
from .data import Table, load_table
from .errors import JobError
from .job import FactorySpec, LossSpec
from .scoring import evaluate
from .state import RunState, seed_all
from .train import make_data, predict_logits, train_model
from .zoo import build_model


@dataclass
class Baseline:
    """The trained baseline, its temperature and its result.json block."""

    model: torch.nn.Module
    temperature: float
    info: dict[str, Any]


def _rows(st: RunState) -> tuple[Table, np.ndarray, np.ndarray]:
    """The table and its (fit, hold-out) rows: labelled training rows, or `baseline.data`."""
    job = st.job
    if not job.baseline.data:
        return (
            st.train,
            st.fit_idx[st.train.labelled[st.fit_idx]],
            st.hold_idx[st.train.labelled[st.hold_idx]],
        )
    table = load_table(job.resolve(job.baseline.data), "baseline.data")
    if table.x.shape[1] != st.num_features:
        raise JobError("baseline.data", f"x has {table.x.shape[1]} features, not {st.num_features}")
    labelled = np.random.default_rng(job.train.seed).permutation(np.flatnonzero(table.labelled))
    n_hold = int(round(len(labelled) * job.calibrate.holdout))
    return table, np.sort(labelled[n_hold:]), np.sort(labelled[:n_hold])


def train_baseline(st: RunState) -> Baseline | None:
    """Same architecture, seed, schedule and early stopping, kd_weight 0; None when skipped."""
    job = st.job
    if job.baseline.mode == "none":
        return None
    table, b_fit, b_hold = _rows(st)
    if len(b_fit) == 0:
        if job.baseline.mode == "labels":
            raise JobError("baseline", "mode 'labels' needs labelled training rows (y >= 0)")
        return None
    assert table.y is not None
    seed_all(job.train.seed)
    model = build_model(job.student.factory, job.student.kwargs, st.num_features, st.num_classes, "student")
    t0 = time.perf_counter()
    val = make_data(table.x[b_hold], None, table.y[b_hold]) if len(b_hold) else None
    run_ = train_model(
        model, make_data(table.x[b_fit], None, table.y[b_fit]), LossSpec(kd_weight=0.0), job.train,
        phase="baseline", val=val, eval_fn=st.eval_fn, **st.common(),
    )  # fmt: skip
    st.curves += run_.curves
    model.cpu()
    seconds = time.perf_counter() - t0
    t = fit_temperature(predict_logits(model, table.x[b_hold]), table.y[b_hold]) if len(b_hold) else 1.0
    res = evaluate(predict_logits(model, st.ev.x), t, st.ev_labels, st.teach.eval_probs, st.ev.slices)
    info = {
        **res["calibrated"],
        "uncalibrated": res["uncalibrated"],
        "temperature": t,
        "train_rows": int(len(b_fit)),
        "seconds": seconds,
        "training": run_.summary(),
        "final_epoch": run_.curves[-1] if run_.curves else None,
        "student": FactorySpec.model_validate(job.student.model_dump()).model_dump(mode="json"),
    }
    return Baseline(model, t, info)


@dataclass
class Choice:
    """The model the run returns, its temperature, and why."""

    model: torch.nn.Module
    temperature: float
    temperature_fitted_on: str
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.info["model"])


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_logits(model, x).argmax(1) == y).mean())


def choose_model(st: RunState, student: torch.nn.Module, baseline: Baseline | None) -> Choice:
    """The distilled student, unless it trails the label-only baseline by more than `baseline.margin`.

    Compared on eval accuracy (labels on every eval row), else on the labelled hold-out rows.
    """
    from .state import temperature_on_holdout

    t, fitted_on = temperature_on_holdout(st, student)
    info: dict[str, Any] = {
        "model": "distilled",
        "margin": st.job.baseline.margin,
        "distilled_temperature": t,
    }
    if baseline is None:
        return Choice(student, t, fitted_on, {**info, "reason": "no baseline"})
    if st.ev_labels is not None:
        on, x, y = "eval", st.ev.x, st.ev_labels
    else:
        hold = st.hold_idx[st.train.labelled[st.hold_idx]]
        if not len(hold):
            return Choice(student, t, fitted_on, {**info, "reason": "no labelled rows to compare on"})
        assert st.train.y is not None
        on, x, y = "holdout", st.train.x[hold], st.train.y[hold]
    d, b = _accuracy(student, x, y), _accuracy(baseline.model, x, y)
    info.update(compared_on=on, distilled_accuracy=d, baseline_accuracy=b, difference=d - b)
    if d < b - st.job.baseline.margin:
        info.update(
            model="baseline",
            reason=f"the distilled student ({d:.4f}) trails the label-only baseline ({b:.4f}) by more than "
            f"{st.job.baseline.margin:.4f} on {on}: the baseline is returned",
        )
        return Choice(baseline.model, baseline.temperature, "labels", info)
    return Choice(
        student, t, fitted_on, {**info, "reason": "distilled student within the margin of the baseline"}
    )
