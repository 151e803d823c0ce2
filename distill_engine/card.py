"""The model card beside every student ONNX file (`card.json`): one pydantic model.

It lives in the engine because the engine writes cards and the daemon reads them, and the daemon
depends on the engine, never the reverse. The daemon validates uploads and registrations with it
(its card module) and documents it in its OpenAPI document. The JSON schema is
OpenAPI 3.0's dialect: boolean `exclusiveMinimum`, `uniqueItems` for the classes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ModelCard(BaseModel):
    """The model card (docs/contract.md); further fields are kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=200)
    version: str | None = Field(default=None, description="Set by the registry on registration")
    input_name: str
    output_name: str
    num_features: int = Field(ge=1)
    feature_names: list[str] | None = None
    classes: list[str | int] = Field(min_length=2, json_schema_extra={"uniqueItems": True})
    output_kind: Literal["logits", "probabilities"] = "logits"
    temperature: float = Field(default=1.0, gt=0, json_schema_extra={"minimum": 0, "exclusiveMinimum": True})
    parent_version: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    training: dict[str, Any] | None = None

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str | int]) -> list[str | int]:
        if len(set(map(str, value))) != len(value):
            raise ValueError("classes must be unique")
        return value

    @model_validator(mode="after")
    def _feature_names_width(self) -> ModelCard:
        if self.feature_names is not None and len(self.feature_names) != self.num_features:
            raise ValueError(
                f"feature_names has {len(self.feature_names)} names for {self.num_features} features"
            )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)
