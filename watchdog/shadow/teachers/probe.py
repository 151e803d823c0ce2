"""`check-config --probe`: each configured teacher contacted once, the way the daemon will call it.

A teacher that validates but cannot answer (a wrong URL, a missing model name, logits read as
probabilities) otherwise shows only as an open circuit once the daemon runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from distill_watchdog.card import parse_card
from distill_watchdog.config import Settings, TeacherConfig
from distill_watchdog.errors import ConfigError
from distill_watchdog.shadow.teachers.adapters import build_adapter


@dataclass
class Probe:
    name: str
    kind: str
    version: str | None = None
    shape: list[int] | None = None
    metadata: str = ""
    error: str | None = None

    def line(self) -> str:
        if self.error is not None:
            return f"teachers.{self.name}: probe failed ({self.kind}): {self.error}"
        meta = f", metadata: {self.metadata}" if self.metadata else ""
        return f"{self.name}: ok, kind {self.kind}, version {self.version}, output shape {self.shape}{meta}"


def student_width(settings: Settings, width: int | None) -> int:
    """The width of the rows to send: `--width`, else the student card's `num_features`."""
    if width is not None:
        return width
    if settings.student.card is None:
        raise ConfigError(["student.card: needed by --probe for the width of a row (or pass --width)"])
    try:
        return parse_card(orjson.loads(Path(settings.student.card).read_bytes())).num_features
    except Exception as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError([f"student.card: cannot read it for --probe ({why})"]) from None


def _metadata(cfg: TeacherConfig, url: str) -> str:
    """OIP v2 model metadata (`GET .../v2/models/<name>`): its versions and input shape."""
    try:
        answer = httpx.get(url, timeout=cfg.timeout_s, headers=cfg.options.get("headers") or {})
        answer.raise_for_status()
        data: Any = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"unavailable ({type(exc).__name__})"
    if not isinstance(data, dict):
        return "not an object"
    inputs = [(i.get("name"), i.get("shape")) for i in data.get("inputs") or [] if isinstance(i, dict)]
    return f"versions {data.get('versions')}, inputs {inputs}"


def probe(cfg: TeacherConfig, width: int) -> Probe:
    """One inference of a row of zeros (and, for http-v2, the model's metadata)."""
    result = Probe(cfg.name, cfg.kind)
    adapter = build_adapter(cfg)
    try:
        if cfg.kind == "http-v2":
            infer_url: str = adapter.infer_url()  # type: ignore[attr-defined]
            result.metadata = _metadata(cfg, infer_url.removesuffix("/").removesuffix("/infer"))
        answer = adapter.predict(np.zeros((1, width), dtype=np.float32))
        result.version, result.shape = answer.version, list(answer.probs.shape)
    except Exception as exc:  # the adapter's TeacherError, or whatever a local model raises
        result.error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    finally:
        adapter.close()
    return result


def probe_all(settings: Settings, width: int | None) -> list[Probe]:
    size = student_width(settings, width)
    return [probe(cfg, size) for cfg in settings.teachers]
