"""The OpenAPI 3 document of every route: schemas come from pydantic models of the bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..card import ModelCard
from .validation import MAX_ID_LENGTH, MAX_SLICE_KEYS, MAX_SLICE_TEXT

if TYPE_CHECKING:
    from ..app import Daemon


class ErrorBody(BaseModel):
    error: str


F32_MAX = 3.4028234663852886e38  # values must fit float32 (the batcher's NonFiniteInputError)
RowId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
SliceText = Annotated[str, Field(max_length=MAX_SLICE_TEXT)]
# A row's labels are `key=value` joined by `,`: keys hold neither, values no `,` (validation.py).
SLICE_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_SLICE_KEYS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_SLICE_TEXT, "pattern": "^[^=,]*$"},
    "additionalProperties": {"type": "string", "maxLength": MAX_SLICE_TEXT, "pattern": "^[^,]*$"},
}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[list[Annotated[float, Field(ge=-F32_MAX, le=F32_MAX)]]] = Field(
        min_length=1, description="Rows of features, [N, D] (D and the row limit: see the served document)"
    )
    slice: dict[SliceText, SliceText] | None = Field(
        default=None,
        max_length=MAX_SLICE_KEYS,
        description="Slice labels for sampling and monitoring (keys without '=' or ',', values without ',')",
    )
    ids: list[RowId] | None = Field(
        default=None,
        description="One id per row, unique within the request (for feedback); generated (random) if "
        "absent. Client ids share one namespace with every other client's",
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
    card: ModelCard
    activate: bool = False


class ActivateRequest(BaseModel):
    reason: str | None = None


class FeedbackLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: RowId = Field(description="The id of a predicted row (from /v1/predict)")
    label: int = Field(
        ge=0,
        le=2**31 - 1,
        description="A class index of the active student: 0 <= label < its number of classes",
    )


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[FeedbackLabel] = Field(description="At most server.max_feedback_labels labels (413 beyond)")


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
    ModelCard,
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
                (400, 404, 413, 422, 503),
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
                (400, 404, 413, 422),
                admin=True,
                params=["version"],
            )
        },
        "/v1/feedback": {
            "post": operation(
                "Join delayed true labels to sampled rows by id",
                FeedbackResponse,
                FeedbackRequest,
                (400, 413, 422, 503),
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
    schemas = {m.__name__: _schema(m) for m in _MODELS}
    predict = schemas["PredictRequest"]["properties"]
    predict["slice"]["anyOf"][0] = SLICE_SCHEMA
    predict["ids"]["anyOf"][0]["uniqueItems"] = True
    if daemon is not None:
        _served_shape(schemas, daemon)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Distill Watchdog", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _served_shape(schemas: dict[str, Any], daemon: Daemon) -> None:
    """The running daemon's limits and the active student's width and classes, in the bodies."""
    inputs = schemas["PredictRequest"]["properties"]["inputs"]
    inputs["maxItems"] = daemon.settings.server.max_rows_per_request
    schemas["FeedbackRequest"]["properties"]["labels"]["maxItems"] = (
        daemon.settings.server.max_feedback_labels
    )
    model = daemon.models.current
    if model is not None:
        width = model.card.num_features
        inputs["items"].update(minItems=width, maxItems=width)
        schemas["FeedbackLabel"]["properties"]["label"]["maximum"] = model.card.num_classes - 1
