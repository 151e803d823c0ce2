"""ONNX Runtime session for one student version: explicit threads, warm-up, calibrated output."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .card import ModelCard
from .errors import ModelRejectedError


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


@dataclass(frozen=True)
class LoadedModel:
    version: str
    card: ModelCard
    session: ort.InferenceSession
    single_row_seconds: float = 0.0  # measured at warm-up; guides the batcher's inline choice

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N, C], temperature applied (logits / T, or log-probabilities / T)."""
        out = self.session.run([self.card.output_name], {self.card.input_name: x})[0]
        out = np.asarray(out, dtype=np.float32)
        temperature = self.card.temperature
        if self.card.output_kind == "logits":
            return softmax(out / temperature if temperature != 1.0 else out.copy())
        if temperature == 1.0:
            return out
        return softmax(np.log(np.clip(out, 1e-12, 1.0)) / temperature)


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cpus()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would steal the CPU from the event loop between micro-batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def load_model(
    source: Path | bytes, card: ModelCard, version: str, threads: int | None = None, warm_batch: int = 1
) -> LoadedModel:
    """Loads, checks against the card and warms a session; any fault is a ModelRejectedError."""
    model_bytes = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        session = ort.InferenceSession(
            model_bytes, session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own exception types for every kind of bad file
        raise ModelRejectedError(f"model: ONNX Runtime cannot load it ({_first_line(exc)})") from None
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if card.input_name not in inputs:
        raise ModelRejectedError(
            f"card.input_name: model has no input {card.input_name!r} (has {sorted(inputs)})"
        )
    if len(inputs) != 1:
        raise ModelRejectedError(f"model: expected one input, found {len(inputs)}")
    if card.output_name not in outputs:
        raise ModelRejectedError(
            f"card.output_name: model has no output {card.output_name!r} (has {sorted(outputs)})"
        )
    spec = inputs[card.input_name]
    if spec.type != "tensor(float)":
        raise ModelRejectedError(f"model: input {spec.name!r} is {spec.type}, expected tensor(float)")
    if len(spec.shape) != 2:
        raise ModelRejectedError(
            f"model: input {spec.name!r} has rank {len(spec.shape)}, expected [batch, features]"
        )
    width = spec.shape[1]
    if isinstance(width, int) and width != card.num_features:
        raise ModelRejectedError(f"card.num_features: card says {card.num_features}, model input has {width}")
    loaded = LoadedModel(version=version, card=card, session=session)
    single_row = float("inf")
    for rows in sorted({1, max(1, warm_batch)}):
        probe = np.zeros((rows, card.num_features), dtype=np.float32)
        try:
            probs = loaded.predict_proba(probe)
            if rows == 1:
                for _ in range(3):  # the first run pays one-off allocations
                    started = time.perf_counter()
                    loaded.predict_proba(probe)
                single_row = time.perf_counter() - started
        except Exception as exc:
            raise ModelRejectedError(f"model: a warm-up run failed ({_first_line(exc)})") from None
        if probs.shape != (rows, card.num_classes):
            raise ModelRejectedError(
                f"card.classes: model outputs {list(probs.shape)} for {rows} rows, "
                f"card has {card.num_classes} classes"
            )
        if not np.all(np.isfinite(probs)):
            raise ModelRejectedError("model: warm-up produced non-finite outputs")
    return dataclasses.replace(loaded, single_row_seconds=single_row)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]
