"""Public HTTP routes: the simple JSON API, Open Inference Protocol v2, health, metrics.

`/v1/predict` and `/v2/models/{name}/infer` are raw ASGI handlers (no framework objects on
the hot path); everything else is a Starlette handler. endpoints.py lists them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from distill_watchdog import __version__, metrics
from distill_watchdog.serving.asgi import (
    JSON_HEADERS,
    Scope,
    header,
    read_body,
    read_request,
    read_rest,
    response_start,
    send_bytes,
    send_json,
    whole_body,
)
from distill_watchdog.serving.batcher import NonFiniteInputError, NonFiniteOutputError
from distill_watchdog.serving.validation import (
    MAX_ID_LENGTH,
    NON_FINITE_INPUT,
    OIP_OUTPUT,
    BadRequest,
    PredictInput,
    new_ids,
    parse_infer,
    parse_json,
    parse_predict,
)

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


def _non_finite(exc: NonFiniteOutputError, field: str) -> BadRequest:
    return BadRequest(422, f"{field}: the model's output is {exc.check} for rows {exc.rows}")


# --- hot paths (raw ASGI) -------------------------------------------------------------------
# They send exactly once, at the end, with status 200; every other answer is raised as
# BadRequest and sent by the dispatcher (WatchdogASGI), which counts it.


async def predict(daemon: Daemon, scope: Scope, receive: Any, send: Any) -> None:
    # The body read, the batcher's future and the answer are inlined (no helper coroutines):
    # each coroutine frame is created, suspended and resumed once per request.
    batcher = daemon.batcher
    batcher.arriving += 1
    try:
        message = await receive()
        limit = daemon.max_body_bytes
        body = whole_body(message, limit)
        if body is None:
            body = await read_rest(scope, receive, message, limit)
        model = daemon.models.current
        if model is None:
            raise BadRequest(503, "no student model is loaded yet")
        request = parse_predict(body, model.num_features, daemon.max_rows_per_request)
    finally:
        batcher.arriving -= 1
    try:
        probs, predictions, version = await batcher.submit(request.x)
    except NonFiniteInputError:
        raise BadRequest(422, f"inputs: {NON_FINITE_INPUT}") from None
    except NonFiniteOutputError as exc:
        raise _non_finite(exc, "inputs") from None
    if daemon.sampler is not None:
        daemon.sampler.offer(request, probs, version)
    answer = orjson.dumps(
        {"model_version": version, "predictions": predictions, "probabilities": probs, "ids": request.ids},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    await send(response_start(200, answer))
    await send({"type": "http.response.body", "body": answer})


async def infer(daemon: Daemon, name: str, scope: Scope, receive: Any, send: Any) -> None:
    if name != daemon.settings.student.name:
        raise BadRequest(404, f"model: unknown model {name[:64]!r}")
    body = await read_body(scope, receive, daemon.max_body_bytes)
    model = daemon.models.current
    if model is None:
        raise BadRequest(503, "no student model is loaded yet")
    raw_length = header(scope, b"inference-header-content-length")
    try:
        header_length = int(raw_length) if raw_length is not None else None
    except ValueError:
        raise BadRequest(400, "Inference-Header-Content-Length: not a number") from None
    request = parse_infer(
        body,
        header_length,
        model.input_name,
        model.num_features,
        daemon.max_rows_per_request,
    )
    try:
        probs, _, version = await daemon.batcher.submit(request.x)
    except NonFiniteInputError:  # parse_infer refuses these first; kept a 4xx should that change
        raise BadRequest(400, "inputs[0].data: values must be finite float32 numbers") from None
    except NonFiniteOutputError as exc:
        raise _non_finite(exc, "inputs[0].data") from None
    if daemon.sampler is not None:
        # OIP traffic is shadowed too; row ids derive from the request id so feedback can join them.
        rid = request.request_id
        ids = [f"{rid}:{i}" for i in range(len(probs))] if rid and len(rid) <= 100 else new_ids(len(probs))
        daemon.sampler.offer(PredictInput(x=request.x, ids=ids, slice=None), probs, version)
    output: dict[str, Any] = {"name": OIP_OUTPUT, "datatype": "FP32", "shape": list(probs.shape)}
    answer: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": [output]}
    if request.request_id is not None:
        answer["id"] = request.request_id
    if not request.binary_output:
        output["data"] = probs.ravel()
        await send_json(send, 200, answer)
        return
    raw = probs.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    head = orjson.dumps(answer)
    await send_bytes(
        send,
        200,
        head + raw,
        [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(len(head)).encode()),
        ],
    )


# --- Starlette routes -----------------------------------------------------------------------


def _daemon(request: Request) -> Daemon:
    return request.app.state.daemon


async def live(request: Request) -> Response:
    return JSON({"live": True})


async def ready(request: Request) -> Response:
    daemon = _daemon(request)
    if daemon.models.current is None or daemon.draining:
        return JSON({"ready": False}, status_code=503)
    return JSON({"ready": True})


async def server_metadata(request: Request) -> Response:
    return JSON({"name": "distill-watchdog", "version": __version__, "extensions": ["binary_tensor_data"]})


def _model_or_404(request: Request) -> Any:
    daemon = _daemon(request)
    name = request.path_params["name"]
    if name != daemon.settings.student.name:
        raise BadRequest(404, f"model: unknown model {name[:64]!r}")
    return daemon.models.current


async def model_metadata(request: Request) -> Response:
    model = _model_or_404(request)
    if model is None:
        return error(503, "no student model is loaded yet")
    card = model.card
    return JSON(
        {
            "name": request.path_params["name"],
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": card.input_name, "datatype": "FP32", "shape": [-1, card.num_features]}],
            "outputs": [{"name": OIP_OUTPUT, "datatype": "FP32", "shape": [-1, card.num_classes]}],
            "parameters": {"classes": [str(c) for c in card.classes], "temperature": card.temperature},
        }
    )


async def model_ready(request: Request) -> Response:
    model = _model_or_404(request)
    if model is None:
        return JSON({"name": request.path_params["name"], "ready": False}, status_code=503)
    return JSON({"name": request.path_params["name"], "ready": True})


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


def parse_feedback(data: Any, num_classes: int, max_labels: int) -> list[tuple[str, int]]:
    """`{"labels": [{"id": str, "label": int}, ...]}` → [(id, label)], or a 4xx naming the field.

    A label is a class index of the active student: one outside its classes would be stored and
    then break every metric computed over the window it sits in.
    """
    if not isinstance(data, dict) or set(data) != {"labels"} or not isinstance(data["labels"], list):
        raise BadRequest(422, 'labels: required, a list of {"id": str, "label": int}')
    items = data["labels"]
    if len(items) > max_labels:
        raise BadRequest(
            413, f"labels: {len(items)} labels exceeds the limit of {max_labels} (server.max_feedback_labels)"
        )
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"id", "label"}:
            raise BadRequest(422, f"labels[{i}]: must be an object with exactly 'id' and 'label'")
        rid, label = item["id"], item["label"]
        if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_LENGTH:
            raise BadRequest(
                422, f"labels[{i}].id: must be a non-empty string of at most {MAX_ID_LENGTH} characters"
            )
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
            raise BadRequest(
                422,
                f"labels[{i}].label: must be a class index, an integer from 0 to {num_classes - 1} "
                f"(the active student has {num_classes} classes)",
            )
        out.append((rid, label))
    return out


async def feedback(request: Request) -> Response:
    """Joins delayed true labels to sampled rows by id; ids never sampled are reported, not errors."""
    import asyncio

    daemon = _daemon(request)
    body = await read_request(request, daemon.max_body_bytes)
    model = daemon.models.current
    if model is None:
        raise BadRequest(503, "no student model is loaded yet: labels are checked against its classes")
    cap = daemon.settings.server.max_feedback_labels
    labels = parse_feedback(parse_json(body), model.card.num_classes, cap)
    accepted, unknown = await asyncio.to_thread(daemon.store.add_labels, labels)
    metrics.feedback_labels_total.labels(outcome="accepted").inc(accepted)
    metrics.feedback_labels_total.labels(outcome="unknown_id").inc(len(labels) - accepted)
    return JSON({"accepted": accepted, "unknown_ids": unknown})


async def openapi(request: Request) -> Response:
    from distill_watchdog.serving.openapi import document

    return JSON(document(_daemon(request)))


__all__ = ["JSON_HEADERS", "error", "infer", "predict"]
