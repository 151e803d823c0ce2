"""The request and response bodies of the HTTP API as pydantic models.

One model per body validates it (the admin bodies, through `read_model`) and documents it (the
OpenAPI document lists every model here). The hot routes' bodies (`PredictRequest`, `InferRequest`,
`FeedbackRequest`) are parsed by hand in validation.py, for speed, with the same limits.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from distill_watchdog.card import ModelCard
from distill_watchdog.serving.validation import MAX_ID_LENGTH, MAX_SLICE_KEYS, MAX_SLICE_TEXT

F32_MAX = 3.4028234663852886e38  # values must fit float32 (the batcher's NonFiniteInputError)
RowId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
SliceText = Annotated[str, Field(max_length=MAX_SLICE_TEXT)]
Reason = Annotated[str | None, Field(default=None, description="Kept in the audit log (500 characters)")]
# A row's labels are `key=value` joined by `,`: keys hold neither, values no `,` (validation.py).
SLICE_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_SLICE_KEYS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_SLICE_TEXT, "pattern": "^[^=,]*$"},
    "additionalProperties": {"type": "string", "maxLength": MAX_SLICE_TEXT, "pattern": "^[^,]*$"},
}


class ErrorBody(BaseModel):
    error: str


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
    reason: Reason


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
    reason: Reason


class TriggerRunRequest(BaseModel):
    reason: Reason
    weak_slices: list[str] | None = Field(
        default=None, description="Slice labels like 'sensor=c'; defaults to the last cycle's weak slices"
    )


class RejectRunRequest(BaseModel):
    reason: Reason


MODELS: list[type[BaseModel]] = [
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
    TriggerRunRequest,
    RejectRunRequest,
]
