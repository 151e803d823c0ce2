"""The OpenAPI 3 document of every route: schemas come from pydantic models of the bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from .. import __version__

if TYPE_CHECKING:
    from ..app import Daemon


class ErrorBody(BaseModel):
    error: str


class PredictRequest(BaseModel):
    inputs: list[list[float]] = Field(min_length=1, description="Rows of features, [N, D]")
    slice: dict[str, str] | None = Field(default=None, description="Slice labels for sampling and monitoring")
    ids: list[str] | None = Field(
        default=None, description="One id per row (for feedback); generated if absent"
    )


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[int]
    probabilities: list[list[float]]
    ids: list[str]


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor]
    outputs: list[dict[str, Any]] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]


class UploadRequest(BaseModel):
    model_base64: str = Field(description="The student ONNX file, base64")
    card: dict[str, Any]
    activate: bool = False


class ActivateRequest(BaseModel):
    reason: str | None = None


class FeedbackLabel(BaseModel):
    id: str = Field(description="The id of a predicted row (from /v1/predict)")
    label: int


class FeedbackRequest(BaseModel):
    labels: list[FeedbackLabel]


class FeedbackResponse(BaseModel):
    accepted: int
    unknown_ids: list[str] = Field(description="Ids with no sampled row (not an error)")


class AcceptTeacherRequest(BaseModel):
    version: str | None = Field(default=None, description="Defaults to the quarantined candidate version")
    reason: str | None = None


_MODELS: list[type[BaseModel]] = [
    FeedbackLabel,
    FeedbackRequest,
    FeedbackResponse,
    AcceptTeacherRequest,
    ErrorBody,
    PredictRequest,
    PredictResponse,
    InferTensor,
    InferRequest,
    InferResponse,
    UploadRequest,
    ActivateRequest,
]
# Routes added by other rooms register their operations here: path -> method -> operation.
EXTRA_PATHS: dict[str, dict[str, Any]] = {}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else _ref(model)
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", **_json(ErrorBody)} for c in codes}


def operation(
    summary: str,
    ok: type[BaseModel] | dict[str, Any] | None = None,
    body: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    admin: bool = False,
    params: list[str] = (),  # type: ignore[assignment]
    ok_code: int = 200,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {str(ok_code): {"description": "ok"}}}
    if ok is not None:
        op["responses"][str(ok_code)].update(_json(ok))
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if admin:
        op["security"] = [{"bearer": []}]
        errors = (*errors, 401)
    op["responses"].update(_errors(*errors))
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ]
    return op


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # every nested model is listed in components itself
    return schema


def document(daemon: Daemon | None = None) -> dict[str, Any]:
    obj = {"type": "object"}
    paths: dict[str, dict[str, Any]] = {
        "/v1/predict": {
            "post": operation(
                "Predict with the active student", PredictResponse, PredictRequest, (400, 413, 422, 503)
            )
        },
        "/v2": {"get": operation("OIP v2 server metadata", obj)},
        "/v2/health/live": {"get": operation("OIP v2 liveness", obj)},
        "/v2/health/ready": {"get": operation("OIP v2 readiness", obj, errors=(503,))},
        "/v2/models/{name}": {
            "get": operation("OIP v2 model metadata", obj, errors=(404, 503), params=["name"])
        },
        "/v2/models/{name}/ready": {
            "get": operation("OIP v2 model readiness", obj, errors=(404, 503), params=["name"])
        },
        "/v2/models/{name}/infer": {
            "post": operation(
                "OIP v2 inference (JSON or binary tensor extension)",
                InferResponse,
                InferRequest,
                (400, 404, 413, 503),
                params=["name"],
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition",
                "responses": {"200": {"description": "ok", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {"get": operation("This document", obj)},
        "/admin/models": {
            "get": operation("List student versions", obj, admin=True),
            "post": operation(
                "Upload a student (multipart 'model' + 'card', or JSON)",
                obj,
                UploadRequest,
                (400, 413, 422),
                admin=True,
                ok_code=201,
            ),
        },
        "/admin/models/{version}/activate": {
            "post": operation(
                "Activate a version (load, warm, swap)",
                obj,
                ActivateRequest,
                (404, 422),
                admin=True,
                params=["version"],
            )
        },
        "/v1/feedback": {
            "post": operation(
                "Join delayed true labels to sampled rows by id",
                FeedbackResponse,
                FeedbackRequest,
                (400, 413, 422),
            )
        },
        "/admin/teachers": {
            "get": operation(
                "Teachers: pins, candidates, circuit state, recent events", obj, errors=(404,), admin=True
            )
        },
        "/admin/teachers/{name}/accept": {
            "post": operation(
                "Accept a teacher version (pins it, releases its quarantined rows; audited)",
                obj,
                AcceptTeacherRequest,
                (404, 409, 422),
                admin=True,
                params=["name"],
            )
        },
        "/admin/models/rollback": {
            "post": operation("Return to the previous active version", obj, errors=(409,), admin=True)
        },
    }
    for path, ops in EXTRA_PATHS.items():
        paths.setdefault(path, {}).update(ops)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Distill Watchdog", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {m.__name__: _schema(m) for m in _MODELS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
