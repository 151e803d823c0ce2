"""Request bodies → arrays, or a 4xx naming the problem. Never trusts a client's types."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


MAX_ID_LENGTH = 128
MAX_SLICE_KEYS = 16
MAX_SLICE_TEXT = 128


class _Ids:
    """Row ids nobody can guess (a client labels rows by id): 128 random bits each, as 32 hex
    digits, cut from a buffer of the kernel's random bytes refilled a few hundred ids at a time
    (one getrandom call per row would cost a system call per request)."""

    ID_BYTES = 16
    BUFFER_IDS = 256

    def __init__(self) -> None:
        self.reset()
        self._fork_hook = False

    def reset(self) -> None:
        self.pool = ""
        self.at = 0

    def take(self, n: int) -> list[str]:
        width = 2 * self.ID_BYTES
        end = self.at + n * width
        if end > len(self.pool):
            if not self._fork_hook:
                # With the first buffer, not at import: a forked child must not repeat its
                # parent's ids.
                os.register_at_fork(after_in_child=self.reset)
                self._fork_hook = True
            self.pool = os.urandom(self.ID_BYTES * max(n, self.BUFFER_IDS)).hex()
            self.at, end = 0, n * width
        start, self.at = self.at, end
        if n == 1:
            return [self.pool[start:end]]
        return [self.pool[i : i + width] for i in range(start, end, width)]


_ids = _Ids()


def new_ids(n: int) -> list[str]:
    return _ids.take(n)


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest(400, "body: empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body: not valid JSON ({exc})") from None


def to_matrix(rows: Any, field: str, num_features: int, max_rows: int) -> np.ndarray:
    """A [N, D] array of numbers (float64 or integer), or BadRequest.

    Not yet float32: the micro-batcher casts its whole batch once, and checks there, once per
    batch, that every value is finite and within float32's range (MicroBatcher's
    `NonFiniteInputError`). Per request, the cast and that check cost a fifth of the parse.
    """
    if not isinstance(rows, list) or not rows or len(rows) > max_rows:
        if not isinstance(rows, list):
            raise BadRequest(422, f"{field}: must be a list of rows")
        if not rows:
            raise BadRequest(422, f"{field}: empty batch")
        raise BadRequest(413, f"{field}: {len(rows)} rows exceeds the limit of {max_rows}")
    try:
        arr = np.array(rows)
    except ValueError:
        arr = None
    if arr is None or arr.ndim != 2:
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                raise BadRequest(422, f"{field}[{i}]: must be a list of {num_features} numbers")
            if len(row) != num_features:
                raise BadRequest(422, f"{field}[{i}]: expected {num_features} values, got {len(row)}")
        raise BadRequest(422, f"{field}: must be a list of rows of numbers")
    if arr.dtype.kind not in "fiu":
        raise BadRequest(422, f"{field}: values must be numbers (got {_kind_name(arr.dtype.kind)})")
    if arr.shape[1] != num_features:
        raise BadRequest(422, f"{field}[0]: expected {num_features} values, got {arr.shape[1]}")
    return arr


NON_FINITE_INPUT = "values must be finite float32 numbers (no NaN, inf or overflow)"


def _kind_name(kind: str) -> str:
    return {"U": "strings", "S": "bytes", "O": "mixed values", "b": "booleans"}.get(kind, "non-numbers")


@dataclass(slots=True)
class PredictInput:
    x: np.ndarray
    ids: list[str]
    slice: dict[str, str] | None


_PREDICT_FIELDS = frozenset({"inputs", "slice", "ids"})


def parse_predict(body: bytes, num_features: int, max_rows: int) -> PredictInput:
    data = parse_json(body)
    if not isinstance(data, dict) or not _PREDICT_FIELDS.issuperset(data):
        if not isinstance(data, dict):
            raise BadRequest(422, "body: must be a JSON object with 'inputs'")
        raise BadRequest(422, f"{sorted(set(data) - _PREDICT_FIELDS)[0]}: unknown field")
    rows = data.get("inputs")
    if rows is None:
        raise BadRequest(422, "inputs: required")
    x = to_matrix(rows, "inputs", num_features, max_rows)
    ids = data.get("ids")
    if ids is None:
        ids = new_ids(len(x))
    else:
        if not isinstance(ids, list) or not all(
            isinstance(i, str) and 0 < len(i) <= MAX_ID_LENGTH for i in ids
        ):
            raise BadRequest(
                422, f"ids: must be a list of non-empty strings of at most {MAX_ID_LENGTH} characters"
            )
        if len(ids) != len(x):
            raise BadRequest(422, f"ids: {len(ids)} ids for {len(x)} rows")
        if len(ids) > 1 and len(set(ids)) != len(ids):
            raise BadRequest(422, "ids: must be unique within a request (feedback finds rows by id)")
    slice_ = data.get("slice")
    return PredictInput(x, ids, None if slice_ is None else parse_slice(slice_))


def parse_slice(value: Any) -> dict[str, str]:
    """A row's slice labels are `key=value`, joined by `,` where a row's labels travel together
    (training data, gates): a key holding `=` or `,`, or a value holding `,`, would read back as
    other slices than the one sent."""
    if not isinstance(value, dict):
        raise BadRequest(422, "slice: must be an object of string keys to string values")
    if len(value) > MAX_SLICE_KEYS:
        raise BadRequest(422, f"slice: at most {MAX_SLICE_KEYS} keys")
    for key, val in value.items():
        if not isinstance(val, str) or len(key) > MAX_SLICE_TEXT or len(val) > MAX_SLICE_TEXT:
            raise BadRequest(
                422, f"slice.{key[:40]}: must be a string of at most {MAX_SLICE_TEXT} characters"
            )
        if not key or "=" in key or "," in key or "," in val:
            raise BadRequest(
                422, f"slice.{key[:40]}: keys must be non-empty without '=' or ',', values without ','"
            )
    return value


# --- Open Inference Protocol v2 -------------------------------------------------------------

OIP_OUTPUT = "probabilities"


@dataclass(slots=True)
class InferInput:
    x: np.ndarray
    request_id: str | None
    binary_output: bool


def parse_infer(
    body: bytes, header_length: int | None, input_name: str, num_features: int, max_rows: int
) -> InferInput:
    """OIP v2 REST request, JSON or with the binary tensor extension (`Inference-Header-Content-Length`)."""
    binary = b""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(400, "Inference-Header-Content-Length: larger than the body")
        body, binary = body[:header_length], body[header_length:]
    data = parse_json(body)
    if not isinstance(data, dict):
        raise BadRequest(400, "body: must be a JSON object")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(400, f"inputs: expected exactly one input tensor named {input_name!r}")
    tensor = inputs[0]
    if tensor.get("name") != input_name:
        raise BadRequest(
            400, f"inputs[0].name: model has no input {str(tensor.get('name'))[:64]!r}; use {input_name!r}"
        )
    if tensor.get("datatype") != "FP32":
        raise BadRequest(400, f"inputs[0].datatype: expected FP32, got {str(tensor.get('datatype'))[:16]!r}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise BadRequest(400, f"inputs[0].shape: expected [batch, {num_features}]")
    rows, width = shape
    if width != num_features:
        raise BadRequest(400, f"inputs[0].shape: expected {num_features} features, got {width}")
    if rows <= 0:
        raise BadRequest(400, "inputs[0].shape: empty batch")
    if rows > max_rows:
        raise BadRequest(413, f"inputs[0].shape: {rows} rows exceeds the limit of {max_rows}")
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(400, "inputs[0].parameters: must be an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if size != rows * width * 4 or len(binary) != size:
            raise BadRequest(400, "inputs[0].parameters.binary_data_size: does not match shape and body")
        x = np.frombuffer(binary, dtype="<f4").reshape(rows, width).astype(np.float32)
        if not np.isfinite(x).all():
            raise BadRequest(400, "inputs[0].data: values must be finite")
    else:
        flat = tensor.get("data")
        if not isinstance(flat, list):
            raise BadRequest(400, "inputs[0].data: required (a flat or nested list of numbers)")
        try:
            arr = np.array(flat)
        except ValueError:
            raise BadRequest(400, "inputs[0].data: ragged nested list") from None
        if arr.dtype.kind not in "fiu":
            raise BadRequest(
                400, f"inputs[0].data: values must be numbers (got {_kind_name(arr.dtype.kind)})"
            )
        if arr.size != rows * width:
            raise BadRequest(400, f"inputs[0].data: {arr.size} values for shape [{rows}, {width}]")
        with np.errstate(over="ignore", invalid="ignore"):
            x = arr.astype(np.float32).reshape(rows, width)
        if not np.isfinite(x).all():
            raise BadRequest(400, "inputs[0].data: values must be finite float32 numbers")
    binary_output = bool((data.get("parameters") or {}).get("binary_data_output", False))
    outputs = data.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise BadRequest(400, "outputs: must be a list of objects")
        for out in outputs:
            if out.get("name") != OIP_OUTPUT:
                raise BadRequest(
                    400, f"outputs: unknown output {str(out.get('name'))[:64]!r}; use {OIP_OUTPUT!r}"
                )
            binary_output = bool((out.get("parameters") or {}).get("binary_data", binary_output))
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(400, "id: must be a string")
    return InferInput(x=x, request_id=request_id, binary_output=binary_output)
