"""The run's files: student.onnx (with the parity check), card.json, result.json, report.html."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from . import metrics as M
from .baseline import Baseline, Choice
from .calibration import apply_temperature
from .card import ModelCard
from .export import INPUT_NAME, OUTPUT_NAME, export_onnx, parity
from .scoring import block, evaluate, json_safe
from .state import RunState
from .train import TrainRun, predict_logits
from .zoo import count_params


def _export(st: RunState, model: torch.nn.Module, temperature: float) -> tuple[dict[str, Any], str]:
    job = st.job
    t0 = time.perf_counter()
    path = export_onnx(model, st.num_features, st.out / "student.onnx", job.export.dynamo, job.export.opset)
    par = parity(model, path, st.ev.x[:4096], temperature, job.export.parity_tolerance)
    par["seconds"] = time.perf_counter() - t0
    par["exporter"] = "dynamo" if job.export.dynamo else "torchscript"
    return par, hashlib.sha256(path.read_bytes()).hexdigest()


def _holdout_block(st: RunState, model: torch.nn.Module, temperature: float) -> dict[str, Any] | None:
    """Hold-out metrics before and after temperature scaling."""
    if not (st.job.calibrate.enabled and len(st.hold_idx)):
        return None
    logits = predict_logits(model, st.train.x[st.hold_idx])
    y = st.labels(st.hold_idx)
    tgt = y if y is not None and (y >= 0).all() else None
    teacher = st.teach.train_probs[st.hold_idx]
    return {
        "before": M.summary(M.softmax(logits), tgt, teacher),
        "after": M.summary(apply_temperature(logits, temperature), tgt, teacher),
    }


def _card(st: RunState, choice: Choice, run: TrainRun, classes: list[str], digest: str) -> dict[str, Any]:
    job = st.job
    training = {
        "job": job.name,
        "seed": job.train.seed,
        "epochs": job.train.epochs,
        "epochs_run": run.epochs_run,
        "best_epoch": run.best_epoch,
        "kept_epoch": run.kept_epoch,
        "batch_size": job.train.batch_size,
        "lr": job.train.lr,
        "lr_schedule": job.train.lr_schedule,
        "loss": job.loss.model_dump(mode="json"),
        "teachers": st.teach.versions or None,
        "train_rows": int(len(st.fit_idx)),
        "synthetic_rows": 0 if st.synth is None else len(st.synth),
        "holdout_rows": int(len(st.hold_idx)),
        "world_size": st.ctx.world_size,
        "student": job.student.model_dump(mode="json"),
        "selected": choice.name,
        "onnx_sha256": digest,
    }
    card = ModelCard(
        name=job.name,
        version=job.version or digest[:12],
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        num_features=st.num_features,
        feature_names=job.feature_names,
        classes=list(classes),
        output_kind="logits",
        temperature=choice.temperature,
        parent_version=job.parent_version,
        created_at=datetime.now(UTC).replace(microsecond=0),
        training=training,
    )
    return {k: v for k, v in card.model_dump(mode="json").items() if v is not None}


def _reliability(st: RunState, logits: np.ndarray, temperature: float) -> dict[str, list[dict[str, float]]]:
    target = st.ev_labels if st.ev_labels is not None else st.teach.eval_probs.argmax(1)
    out = {
        "student (after scaling)": M.reliability_bins(apply_temperature(logits, temperature), target),
        "student (before scaling)": M.reliability_bins(M.softmax(logits), target),
    }
    if st.ev_labels is not None:
        out["teacher"] = M.reliability_bins(st.teach.eval_probs, st.ev_labels)
    return out


def _synthesis_block(st: RunState, student: dict[str, Any]) -> dict[str, Any] | None:
    """Counts per slice and filter, teacher calls, and the ablation when the job asked for it."""
    if st.synth is None:
        return None
    out: dict[str, Any] = {
        "rows": len(st.synth),
        "weight": st.job.synthesis.weight,
        "teacher_calls": st.synth.teacher_calls,
        "slices": st.synth.counts,
    }
    if st.ablation is not None:
        out["ablation"] = {"with_synthesis": student, **st.ablation}
    return out


def write_outputs(
    st: RunState,
    choice: Choice,
    student: torch.nn.Module,
    run: TrainRun,
    baseline: Baseline | None,
    stop: dict[str, Any],
    stages: list[dict[str, Any]],
    classes: list[str],
    seconds: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Export the returned model and write card.json, result.json and report.html."""
    ev_logits = predict_logits(choice.model, st.ev.x)
    returned = evaluate(ev_logits, choice.temperature, st.ev_labels, st.teach.eval_probs, st.ev.slices)
    par, digest = _export(st, choice.model, choice.temperature)
    card = _card(st, choice, run, classes, digest)
    known = [v for v in st.teach.params.values() if v is not None]
    distilled = returned["calibrated"]
    if choice.model is not student:
        t = float(choice.info.get("distilled_temperature", 1.0))
        distilled = evaluate(
            predict_logits(student, st.ev.x), t, st.ev_labels, st.teach.eval_probs, st.ev.slices
        )["calibrated"]
    result = {
        "name": st.job.name,
        "version": card["version"],
        "teacher": block(st.teach.eval_probs, st.ev_labels, st.teach.eval_probs, st.ev.slices),
        "student": returned["calibrated"],
        "student_uncalibrated": returned["uncalibrated"],
        "distilled": distilled,
        "baseline": None if baseline is None else baseline.info,
        "selected": choice.info,
        "training": run.summary(),
        "temperature": choice.temperature,
        "temperature_fitted_on": choice.temperature_fitted_on,
        "calibration_holdout": _holdout_block(st, choice.model, choice.temperature),
        "curation": st.cur.counts if st.cur else {},
        "stages": stages,
        "stop": stop,
        "onnx_parity": par,
        "params": {
            "teacher": sum(known) if known else None,
            "teachers": dict(st.teach.params),
            "student": count_params(choice.model),
            "assistants": [s["params"] for s in stages],
        },
        "teacher_versions": st.teach.versions,
        "world_size": st.ctx.world_size,
        "seconds": {"student_training": seconds},
        "wall_seconds": time.perf_counter() - st.t0,
        "curves": st.curves,
        "classes": classes,
        "train_agreement": stop["evidence"]["fit"]["train_agreement"],
        "init_from": st.warm_start,
        "synthesis": _synthesis_block(st, returned["calibrated"]),
    }
    result, card = json_safe(result), json_safe(card)
    (st.out / "card.json").write_text(json.dumps(card, indent=2))
    (st.out / "result.json").write_text(json.dumps(result, indent=2))
    from .report import render_report

    (st.out / "report.html").write_text(
        render_report(result, card, _reliability(st, ev_logits, choice.temperature))
    )
    return result, card
