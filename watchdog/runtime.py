"""ONNX Runtime session for one student version: explicit threads, warm-up, calibrated output.

The card's temperature and the softmax are appended to the graph (a "calibration head"), so
ONNX Runtime returns calibrated probabilities in the same run: for the small students this
daemon serves, five numpy calls on a [1, 10] array cost as much as the model itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from distill_watchdog.card import ModelCard
from distill_watchdog.errors import ModelRejectedError


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


CALIBRATED_OUTPUT = "watchdog_calibrated_probabilities"


@dataclass(frozen=True)
class LoadedModel:
    version: str
    card: ModelCard
    session: ort.InferenceSession
    single_row_seconds: float = 0.0  # measured at warm-up; guides the batcher's inline choice
    threads: int = 1
    # The card's, as plain attributes for the request path (see app.Daemon.max_body_bytes).
    input_name: str = field(init=False)
    num_features: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_name", self.card.input_name)
        object.__setattr__(self, "num_features", self.card.num_features)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N, C], temperature applied (logits / T, or log-probabilities / T)."""
        return self.session.run([CALIBRATED_OUTPUT], {self.input_name: x})[0]

    def timed_proba(self, x: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(probabilities, wall seconds, cost seconds) of one run.

        The cost is what the run itself takes: CPU time of the calling thread for a one-thread
        session (ORT releases the GIL during the run, and taking it back can wait for another
        thread's switch interval: wall time would count that wait as the model's), wall time
        otherwise.
        """
        wall, cpu = time.perf_counter(), time.thread_time()
        probs = self.session.run([CALIBRATED_OUTPUT], {self.input_name: x})[0]
        wall = time.perf_counter() - wall
        return probs, wall, (time.thread_time() - cpu if self.threads == 1 else wall)


def calibration_head(model_bytes: bytes, card: ModelCard) -> bytes:
    """The model with `CALIBRATED_OUTPUT` = softmax(logits / T), or softmax(log p / T), as float32."""
    proto = onnx.load_from_string(model_bytes)
    graph = proto.graph
    source = next((o for o in graph.output if o.name == card.output_name), None)
    if source is None:
        raise ModelRejectedError(f"card.output_name: model has no output {card.output_name!r}")
    name, nodes, constants = source.name, [], []

    def step(op: str, *inputs: str, **attrs: object) -> None:
        nonlocal name
        out = f"{CALIBRATED_OUTPUT}_{len(nodes)}"
        nodes.append(helper.make_node(op, [name, *inputs], [out], **attrs))
        name = out

    def constant(value: float) -> str:
        cname = f"{CALIBRATED_OUTPUT}_c{len(constants)}"
        constants.append(helper.make_tensor(cname, TensorProto.FLOAT, [], [value]))
        return cname

    if source.type.tensor_type.elem_type != TensorProto.FLOAT:
        step("Cast", to=TensorProto.FLOAT)
    if card.output_kind == "probabilities":
        if card.temperature != 1.0:
            step("Max", constant(1e-12))
            step("Log")
            step("Div", constant(card.temperature))
            step("Softmax", axis=1)
    else:
        if card.temperature != 1.0:
            step("Div", constant(card.temperature))
        step("Softmax", axis=1)
    if not nodes:
        step("Identity")
    nodes[-1].output[0] = CALIBRATED_OUTPUT
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    graph.output.append(helper.make_tensor_value_info(CALIBRATED_OUTPUT, TensorProto.FLOAT, None))
    return proto.SerializeToString()


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
    """Loads, checks against the card and warms a session; any fault is a ModelRejectedError.

    `threads=None` means up to the CPUs this process may use: a model whose largest batch runs
    faster on one thread (a tiny one, where waking the pool costs more than the work) gets one.
    """
    model_bytes = source if isinstance(source, bytes) else Path(source).read_bytes()
    _refuse_external_data(model_bytes)
    _check_against_card(_session(model_bytes, 1, optimize=False), card)
    try:
        calibrated = calibration_head(model_bytes, card)
    except ModelRejectedError:
        raise
    except Exception as exc:
        raise ModelRejectedError(f"model: cannot append the calibration head ({_first_line(exc)})") from None
    warm_rows = sorted({1, max(1, warm_batch)})
    candidates = [threads] if threads else sorted({available_cpus(), 1}, reverse=True)
    best: LoadedModel | None = None
    best_seconds = float("inf")
    for count in candidates:
        loaded = LoadedModel(version=version, card=card, session=_session(calibrated, count), threads=count)
        seconds = _warm(loaded, warm_rows)
        if best is None or seconds[-1] <= 1.2 * best_seconds:  # fewer threads unless clearly slower
            best, best_seconds = dataclasses.replace(loaded, single_row_seconds=seconds[0]), seconds[-1]
        if seconds[-1] > 1e-3:
            break  # a model this size needs the threads; no point timing one
    assert best is not None
    return best


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for graph in [attr.g] if attr.HasField("g") else []:
                yield from _graph_tensors(graph)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)


def _refuse_external_data(model_bytes: bytes) -> None:
    """A model from bytes resolves a tensor's external-data `location` against the working
    directory: an uploaded model could read any file there (settings, the database) into its
    weights. Such models are refused; every tensor must be inside the file."""
    try:
        proto = onnx.load_from_string(model_bytes)  # parses only: external data is not followed
    except Exception:
        return  # not a model: ONNX Runtime refuses it below with its own reason
    tensors = itertools.chain(_graph_tensors(proto.graph), *(_node_tensors(f.node) for f in proto.functions))
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise ModelRejectedError(
                f"model: tensor {tensor.name!r} keeps its data in an external file ({where[:100]!r}); "
                "external data is not accepted: save the model with every tensor inside the file"
            )


def _session(model_bytes: bytes, threads: int | None, optimize: bool = True) -> ort.InferenceSession:
    opts = session_options(threads)
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for every kind of bad file
        raise ModelRejectedError(f"model: ONNX Runtime cannot load it ({_first_line(exc)})") from None


def _check_against_card(session: ort.InferenceSession, card: ModelCard) -> None:
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


def _warm(model: LoadedModel, rows_list: list[int]) -> list[float]:
    """Runs each batch size until timings settle; checks the output; best seconds per size."""
    card = model.card
    timings = []
    for rows in rows_list:
        probe = np.zeros((rows, card.num_features), dtype=np.float32)
        best = float("inf")
        try:
            for _ in range(4):  # the first run pays one-off allocations
                started = time.perf_counter()
                probs = model.predict_proba(probe)
                best = min(best, time.perf_counter() - started)
        except Exception as exc:
            raise ModelRejectedError(f"model: a warm-up run failed ({_first_line(exc)})") from None
        if probs.shape != (rows, card.num_classes):
            raise ModelRejectedError(
                f"card.classes: model outputs {list(probs.shape)} for {rows} rows, "
                f"card has {card.num_classes} classes"
            )
        if not np.all(np.isfinite(probs)):
            raise ModelRejectedError("model: warm-up produced non-finite outputs")
        _check_probabilities(probs, card)
        timings.append(best)
    return timings


def _check_probabilities(probs: np.ndarray, card: ModelCard) -> None:
    """The served output must be probabilities. Only a card saying `probabilities` (temperature
    1: no softmax appended) can fail this, when the model outputs something else (logits)."""
    sums = probs.sum(axis=1)
    worst = float(sums[np.argmax(np.abs(sums - 1.0))])
    if (probs < -1e-6).any() or (probs > 1 + 1e-6).any() or abs(worst - 1.0) > 1e-3:
        raise ModelRejectedError(
            f"card.output_kind: the model's outputs are not probabilities (a row of the warm-up "
            f"sums to {worst:.4g}); if the model outputs logits, set output_kind: logits"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]
