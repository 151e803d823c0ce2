"""The stop-rule stage: measures fit, trains the wider probe when the run plateaued, and decides."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import metrics as M
from .errors import JobError
from .export import onnx_logits
from .state import RunState, holdout_data, seed_all
from .stop import ceiling_checks, decide, probe_outcome, rising_at_end, slice_ceilings, training_verdict
from .train import TrainRun, make_data, predict_logits, train_model
from .zoo import build_model, wider_variants


def _sample(st: RunState) -> np.ndarray:
    """Positions (into the fit rows) of the seeded `stop.probe_rows` sample the probe trains on."""
    rng = np.random.default_rng(st.job.train.seed)
    return np.sort(rng.permutation(len(st.fit_idx))[: st.job.stop.probe_rows])


def _fit(st: RunState, model: torch.nn.Module) -> dict[str, float]:
    """Agreement with the teacher on the sampled training rows and on the hold-out."""
    sample = st.fit_idx[_sample(st)]
    probs = st.teach.train_probs
    out = {
        "train_agreement": M.agreement(M.softmax(predict_logits(model, st.train.x[sample])), probs[sample])
    }
    if len(st.hold_idx):
        hold = M.softmax(predict_logits(model, st.train.x[st.hold_idx]))
        out["holdout_agreement"] = M.agreement(hold, probs[st.hold_idx])
    return out


def _probe(st: RunState, fit: dict[str, float]) -> dict[str, Any] | None:
    """Train the widest same-family variant within `stop.max_params_factor` for `stop.probe_epochs`."""
    job, spec = st.job, st.job.stop
    variants = wider_variants(
        job.student.factory, job.student.kwargs, st.num_features, st.num_classes, spec.max_params_factor
    )
    if not variants:
        return {"note": "the student's factory has no width argument to widen", "clearly_better": False}
    wide = variants[-1]
    seed_all(job.train.seed + 99)
    model = build_model(wide["factory"], wide["kwargs"], st.num_features, st.num_classes, "stop.probe")
    pos = _sample(st)
    rows = st.fit_idx[pos]
    data = make_data(st.train.x[rows], st.teach.train_probs[rows], st.labels(rows), st.weights_fit[pos])
    train_spec = job.train.model_copy(update={"epochs": spec.probe_epochs, "patience": 0})
    run_ = train_model(
        model,
        data,
        job.loss,
        train_spec,
        phase="probe",
        val=holdout_data(st, st.teach.train_probs),
        **st.common(),
    )
    model.cpu()
    probe_fit = {
        **_fit(st, model),
        "kwargs": wide["kwargs"],
        "params": wide["params"],
        "epochs": run_.epochs_run,
    }
    return probe_outcome(spec, fit, probe_fit)


def stop_block(
    st: RunState, student: torch.nn.Module, run: TrainRun, returned: torch.nn.Module
) -> dict[str, Any]:
    """result.json `stop`: training verdict with evidence, ceiling checks, per-slice ceilings."""
    spec = st.job.stop
    fit = _fit(st, student)
    summary = run.summary()
    trend = rising_at_end(run.val_curve, run.stopped_early, spec.rising_delta)
    probe = None
    if not trend["rising"] and spec.probe_epochs > 0 and fit["train_agreement"] < spec.capacity_agreement:
        probe = _probe(st, fit)
    verdict, evidence = training_verdict(spec, summary, fit, probe)
    returned_probs = M.softmax(predict_logits(returned, st.ev.x))
    previous = None
    if spec.previous_model:
        path = st.job.resolve(spec.previous_model)
        if not path.exists():
            raise JobError("stop.previous_model", f"file not found: {path}")
        previous = M.softmax(onnx_logits(path, st.ev.x))
    checks = ceiling_checks(
        spec, returned_probs, st.teach.eval_probs, st.ev_labels, previous, st.job.train.seed
    )
    rows: dict[str, int] = {}
    if st.train.slices is not None:
        names, counts = np.unique(st.train.slices[st.fit_idx].astype(str), return_counts=True)
        rows = {str(n): int(c) for n, c in zip(names, counts, strict=True)}
    slices = slice_ceilings(spec, returned_probs, st.teach.eval_probs, st.ev_labels, st.ev.slices, rows)
    return decide(verdict, checks, slices, evidence)
