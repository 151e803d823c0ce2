"""Maps a daemon `TeacherConfig` onto the engine's adapter (`distill_engine.teachers`).

One place for each concept: request encoding, response decoding and local model loading
live in the engine; the daemon only adds guarding (see guard.py) and pinning.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from distill_watchdog.config import TeacherConfig
from distill_watchdog.errors import ConfigError

if TYPE_CHECKING:
    from distill_engine.job import TeacherSpec
    from distill_engine.teachers import Teacher


def spec_for(cfg: TeacherConfig) -> TeacherSpec:
    """`location` is a path for local kinds and a URL for HTTP kinds; `options` holds the rest."""
    from distill_engine.job import TeacherSpec  # imports torch: only when a teacher is configured

    where: dict[str, Any] = {"url": cfg.location} if cfg.kind.startswith("http") else {"path": cfg.location}
    try:
        return TeacherSpec(
            name=cfg.name,
            kind=cfg.kind,
            timeout_s=cfg.timeout_s,
            weight=cfg.weight or 1.0,
            slices=cfg.slices,
            **where,
            **cfg.options,
        )
    except ValidationError as exc:  # one line per fault, with its dotted key (never the values)
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            key = f"teachers.{cfg.name}.options" + (f".{where}" if where else "")
            msg = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            lines.append(f"{key}: {msg.removeprefix('Value error, ')}")
        raise ConfigError(lines) from None


def build_adapter(cfg: TeacherConfig, base_dir: Path | None = None) -> Teacher:
    from distill_engine.teachers import make_teacher

    return make_teacher(spec_for(cfg), base_dir)
