"""The model card that travels beside every student ONNX file (contract: `card.json`).

The model itself is the engine's (`distill_engine.card.ModelCard`: the engine writes cards, the
daemon reads them); this module turns its validation errors into one ModelRejectedError.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from distill_engine.card import ModelCard
from distill_watchdog.errors import ModelRejectedError

__all__ = ["ModelCard", "parse_card"]


def parse_card(data: Any) -> ModelCard:
    """Validates a card; faults become one ModelRejectedError naming the fields."""
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        faults = "; ".join(
            f"card.{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ModelRejectedError(faults) from None
