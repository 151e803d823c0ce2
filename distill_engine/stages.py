"""Teacher-assistant stages: each model learns from the current teacher, then teaches the next."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import metrics as M
from .export import export_onnx
from .scoring import evaluate
from .state import RunState, holdout_data, seed_all, temperature_on_holdout
from .train import make_data, predict_logits, train_model
from .warm import load_onnx_weights
from .zoo import build_model, count_params


def train_assistants(st: RunState) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Train every stage; returns their records and the teacher probabilities for the student."""
    job = st.job
    records: list[dict[str, Any]] = []
    teacher_all = st.teach.train_probs
    for i, stage in enumerate(job.stages):
        seed_all(job.train.seed + 1000 * (i + 1))
        field = f"stages.{i}.student"
        assistant = build_model(
            stage.student.factory, stage.student.kwargs, st.num_features, st.num_classes, field
        )
        if stage.student.init_from:
            load_onnx_weights(
                assistant,
                job.resolve(stage.student.init_from),
                st.num_features,
                f"{field}.init_from",
                probe=st.ev.x,
                grow=True,
            )
        t0 = time.perf_counter()
        data = make_data(
            st.train.x[st.fit_idx], teacher_all[st.fit_idx], st.labels(st.fit_idx), st.weights_fit
        )
        spec = job.train.model_copy(update={"seed": job.train.seed + i + 1})
        run_ = train_model(
            assistant, data, job.loss, spec, phase=f"assistant{i}", epochs=stage.epochs or job.train.epochs,
            val=holdout_data(st, teacher_all), eval_fn=st.eval_fn, **st.common(),
        )  # fmt: skip
        st.curves += run_.curves
        assistant.cpu()
        temperature, _ = temperature_on_holdout(st, assistant)
        rec: dict[str, Any] = {
            "index": i,
            "factory": stage.student.factory,
            "kwargs": stage.student.kwargs,
            "params": count_params(assistant),
            "temperature": temperature,
            "seconds": time.perf_counter() - t0,
            "training": run_.summary(),
            "eval": evaluate(
                predict_logits(assistant, st.ev.x), temperature, st.ev_labels, st.teach.eval_probs, None
            )["calibrated"],
        }
        if st.ctx.is_main:
            path = export_onnx(
                assistant, st.num_features, st.out / f"assistant{i}.onnx", job.export.dynamo, job.export.opset
            )
            rec["onnx"] = path.name
        records.append(rec)
        # The assistant teaches the next stage with its own (uncalibrated) probabilities.
        teacher_all = M.softmax(predict_logits(assistant, st.train.x))
    return records, teacher_all
