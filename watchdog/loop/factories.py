"""Which student factories a stored card may name.

A card's `training.student.factory` (`module:function`) is imported and called by the training
child. Cards arrive by upload, so only the engine's zoo and the factories the daemon's own
config names (`distill.allowed_factories`) are honoured; any other one is refused and the run
uses the default student, saying so in its record.
"""

from __future__ import annotations

from typing import Any

from distill_watchdog.config import DistillConfig

ALWAYS_ALLOWED = ("distill_engine.zoo:*",)


def factory_allowed(factory: str, allowed: list[str]) -> bool:
    """`module:function` matches an entry naming it exactly, or `module:*` for its module."""
    module, sep, name = factory.partition(":")
    if not sep or not module or not name:
        return False
    return any(entry in (factory, f"{module}:*") for entry in (*ALWAYS_ALLOWED, *allowed))


def trusted_student(
    student: dict[str, Any] | None, cfg: DistillConfig
) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """(the card's student, None) when its factory is allowed; else (None, why it was refused)."""
    if student is None or factory_allowed(student["factory"], cfg.allowed_factories):
        return student, None
    return None, {
        "factory": str(student["factory"])[:200],
        "reason": "not distill_engine.zoo:* nor in distill.allowed_factories; the default student was used",
    }
