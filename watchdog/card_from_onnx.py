"""A model card built from the ONNX file itself, plus what only a person knows.

The graph says the input name, the feature count and the output; a probe batch says whether
the output holds probabilities (rows non-negative and summing to 1) or logits. Class names
and the architecture to retrain (`training.student`) come from options. The card model stays
`card.ModelCard`; this module only fills it in.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from distill_watchdog.card import ModelCard, parse_card
from distill_watchdog.errors import ModelRejectedError

OutputKind = Literal["logits", "probabilities"]
PROBE_ROWS = 64
_FLOAT_TENSORS = {"tensor(float)", "tensor(double)", "tensor(float16)"}
_PROB_NAME = re.compile(r"prob|softmax", re.I)
_LOGIT_NAME = re.compile(r"logit", re.I)


@dataclass
class Inspection:
    """What the ONNX file says about itself; `notes` explain each choice made for the user."""

    input_name: str
    num_features: int
    output_name: str
    num_classes: int
    output_kind: OutputKind
    notes: list[str] = field(default_factory=list)


def kind_from_name(name: str) -> OutputKind | None:
    """`probabilities` or `logits` when the output's name says so unambiguously, else None."""
    prob, logit = bool(_PROB_NAME.search(name)), bool(_LOGIT_NAME.search(name))
    if prob == logit:
        return None
    return "probabilities" if prob else "logits"


def looks_like_probabilities(values: np.ndarray, atol: float = 1e-3) -> bool:
    """Every row non-negative and summing to 1 (within `atol`)."""
    return (
        bool(values.size)
        and bool((values >= -1e-6).all())
        and bool(np.allclose(values.sum(axis=1), 1.0, atol=atol))
    )


def _session(model_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for every kind of bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelRejectedError(f"model: ONNX Runtime cannot load it ({first})") from None


def _pick_output(session: ort.InferenceSession, wanted: str | None) -> ort.NodeArg:
    outputs = session.get_outputs()
    if wanted is not None:
        found = next((o for o in outputs if o.name == wanted), None)
        if found is None:
            raise ModelRejectedError(
                f"output: model has no output {wanted!r} (has {[o.name for o in outputs]})"
            )
        return found
    usable = [o for o in outputs if o.type in _FLOAT_TENSORS and len(o.shape) == 2]
    if len(usable) == 1:
        return usable[0]
    named = [o for o in usable if kind_from_name(o.name) is not None]
    if len(named) == 1:
        return named[0]
    names = [o.name for o in (usable or outputs)]
    raise ModelRejectedError(
        f"output: cannot tell which of the outputs {names} holds the class scores; name it with --output"
    )


def inspect_onnx(
    model_bytes: bytes, output: str | None = None, output_kind: OutputKind | None = None
) -> Inspection:
    """Reads names and widths from the graph and the output kind from a probe batch."""
    session = _session(model_bytes)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelRejectedError(f"model: expected one input [batch, features], found {len(inputs)}")
    spec = inputs[0]
    if spec.type != "tensor(float)" or len(spec.shape) != 2 or not isinstance(spec.shape[1], int):
        raise ModelRejectedError(
            f"model: input {spec.name!r} is {spec.type} {spec.shape}; expected float [batch, features] "
            "with a fixed feature count (or write the card by hand and pass --card)"
        )
    out = _pick_output(session, output)
    rows = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else PROBE_ROWS
    probe = np.random.default_rng(0).normal(size=(rows, spec.shape[1])).astype(np.float32)
    try:
        values = np.asarray(session.run([out.name], {spec.name: probe})[0], dtype=np.float64)
    except Exception as exc:
        raise ModelRejectedError(f"model: a probe run failed ({str(exc).splitlines()[0][:300]})") from None
    if values.ndim != 2 or values.shape[0] != rows:
        raise ModelRejectedError(f"output {out.name!r}: shape {list(values.shape)} for {rows} rows")
    if not np.isfinite(values).all():
        raise ModelRejectedError(f"output {out.name!r}: a probe batch gave non-finite values")
    notes = [f"input {spec.name!r}: {spec.shape[1]} features; output {out.name!r}: {values.shape[1]} classes"]
    kind = output_kind or _kind(out.name, values, notes)
    return Inspection(spec.name, int(spec.shape[1]), out.name, int(values.shape[1]), kind, notes)


def _kind(name: str, values: np.ndarray, notes: list[str]) -> OutputKind:
    """The values decide (random logits never sum to 1 on every probe row); the name is a hint."""
    by_values: OutputKind = "probabilities" if looks_like_probabilities(values) else "logits"
    by_name = kind_from_name(name)
    sums = values.sum(axis=1)
    evidence = f"rows sum to {sums.min():.3g}..{sums.max():.3g}, minimum {values.min():.3g}"
    if by_name is not None and by_name != by_values:
        notes.append(
            f"output_kind: {by_values} (the name {name!r} suggests {by_name}, but on {len(values)} probe "
            f"rows {evidence}); pass --output-kind to override"
        )
    else:
        notes.append(f"output_kind: {by_values} ({evidence} on {len(values)} probe rows)")
    return by_values


def parse_classes(text: str | None = None, path: Path | None = None) -> list[str] | None:
    """Class names from `a,b,c` or a file with one name per line (blank lines skipped)."""
    if text is not None and path is not None:
        raise ModelRejectedError("classes: give --classes or --classes-file, not both")
    if path is not None:
        try:
            raw = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ModelRejectedError(f"classes-file: cannot read {path} ({exc.strerror})") from None
    elif text is not None:
        raw = text.split(",")
    else:
        return None
    names = [name.strip() for name in raw if name.strip()]
    if not names:
        raise ModelRejectedError("classes: no class names given")
    return names


def student_spec(factory: str | None, kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """`training.student` from the options; None when no factory is named."""
    if factory is None:
        if kwargs is not None:
            raise ModelRejectedError("student-kwargs: needs --student-factory")
        return None
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", factory):
        raise ModelRejectedError(f"student-factory: {factory!r} is not 'module:function'")
    return {"factory": factory, "kwargs": dict(kwargs or {})}


def check_student_fits(
    model_bytes: bytes, student: dict[str, Any], num_features: int, num_classes: int
) -> int:
    """Builds the factory's module and loads the ONNX weights into it (what a warm start does).

    A mismatch here would make every redistillation of this student fail at its warm start,
    so it is refused at registration. Returns the parameter count. Imports torch (seconds).
    """
    from distill_engine.errors import JobError
    from distill_engine.warm import load_onnx_weights
    from distill_engine.zoo import build_model, count_params

    try:
        module = build_model(student["factory"], student["kwargs"], num_features, num_classes)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(model_bytes)
            load_onnx_weights(module, path, num_features, field="student-factory")
    except JobError as exc:
        raise ModelRejectedError(f"{exc.field.replace('student.', 'student-')}: {exc.reason}") from None
    return count_params(module)


def card_from_onnx(
    model_bytes: bytes,
    name: str,
    classes: list[str] | None = None,
    student: dict[str, Any] | None = None,
    output: str | None = None,
    output_kind: OutputKind | None = None,
) -> tuple[ModelCard, list[str]]:
    """The card for this file and the notes that say how each field was found."""
    found = inspect_onnx(model_bytes, output, output_kind)
    notes = list(found.notes)
    if classes is None:
        labels: list[str | int] = list(range(found.num_classes))
        notes.append(f"classes: none given; using 0..{found.num_classes - 1} from the output width")
    elif len(classes) != found.num_classes:
        raise ModelRejectedError(
            f"classes: {len(classes)} names given, the output {found.output_name!r} "
            f"has {found.num_classes} columns"
        )
    else:
        labels = list(classes)
    data: dict[str, Any] = {
        "name": name,
        "input_name": found.input_name,
        "output_name": found.output_name,
        "num_features": found.num_features,
        "classes": labels,
        "output_kind": found.output_kind,
    }
    if student is not None:
        params = check_student_fits(model_bytes, student, found.num_features, found.num_classes)
        data["training"] = {"student": student}
        notes.append(
            f"training.student: {student['factory']} {student['kwargs']} ({params} parameters; weights fit)"
        )
    else:
        notes.append(
            "training.student: not given; redistillation trains `distill.job.student` or the default "
            "architecture from scratch, and each run's report says which (--student-factory names it)"
        )
    return parse_card(data), notes
