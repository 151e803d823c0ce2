"""The model card that travels beside every student ONNX file (contract: `card.json`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ModelRejectedError


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=200)
    version: str | None = None
    input_name: str
    output_name: str
    num_features: int = Field(gt=0)
    feature_names: list[str] | None = None
    classes: list[str | int] = Field(min_length=2)
    output_kind: Literal["logits", "probabilities"] = "logits"
    temperature: float = Field(default=1.0, gt=0)
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

    @classmethod
    def parse(cls, data: Any) -> ModelCard:
        """Validates a card; faults become one ModelRejectedError naming the fields."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            faults = "; ".join(
                f"card.{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ModelRejectedError(faults) from None
