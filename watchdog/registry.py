"""Student versions: ONNX files by content hash with their cards, activation, rollback.

A version id is the first 16 hex digits of sha256(ONNX bytes + canonical card), so the same
file with a re-fitted temperature is a new version, and registering twice is idempotent.
Files live only in `models_dir`, named by hash: no path from a card or request reaches disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from distill_watchdog import metrics
from distill_watchdog.card import ModelCard, parse_card
from distill_watchdog.errors import ConflictError, ModelRejectedError, NotFoundError
from distill_watchdog.runtime import LoadedModel, load_model
from distill_watchdog.store import ModelVersion, Store

VERSION_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    name: str
    sha256: str
    created_at: float
    card: ModelCard
    active: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "active": self.active,
            "card": self.card.model_dump(mode="json"),
        }


def _card_digest(card: ModelCard) -> bytes:
    data = card.model_dump(mode="json", exclude={"version", "created_at"})
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


class Registry:
    def __init__(self, store: Store, models_dir: Path, ort_threads: int | None = None) -> None:
        self.store = store
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.ort_threads = ort_threads

    # --- registration ------------------------------------------------------------------
    def register(self, model_bytes: bytes, card_data: Any, actor: str = "cli") -> VersionInfo:
        """Validates by loading in ONNX Runtime, then stores; a refused model changes nothing."""
        try:
            card = parse_card(card_data)
            sha = hashlib.sha256(model_bytes).hexdigest()
            version = hashlib.sha256(sha.encode() + _card_digest(card)).hexdigest()[:16]
            load_model(model_bytes, card, version, threads=1)
        except ModelRejectedError:
            metrics.model_rejections_total.inc()
            raise
        card = card.model_copy(update={"version": version})
        path = self.models_dir / f"{sha}.onnx"
        if not path.exists():
            _atomic_write(path, model_bytes)
        self.store.add_model_blob(sha, model_bytes)
        row = ModelVersion(
            version=version,
            name=card.name,
            sha256=sha,
            filename=path.name,
            card_json=card.model_dump_json(),
            created_at=time.time(),
            parent_version=card.parent_version,
        )
        stored = self.store.add_model_version(row)
        if stored is row:
            self.store.audit(actor, "model.register", version, name=card.name, sha256=sha)
        return self._info(stored, self.store.active_version())

    def register_files(self, model_path: Path, card_path: Path, actor: str = "cli") -> VersionInfo:
        try:
            model_bytes = Path(model_path).read_bytes()
        except OSError as exc:
            raise ModelRejectedError(f"model: cannot read {model_path} ({exc.strerror})") from None
        try:
            card_data = orjson.loads(Path(card_path).read_bytes())
        except OSError as exc:
            raise ModelRejectedError(f"card: cannot read {card_path} ({exc.strerror})") from None
        except orjson.JSONDecodeError as exc:
            raise ModelRejectedError(f"card: {card_path} is not valid JSON ({exc})") from None
        return self.register(model_bytes, card_data, actor=actor)

    # --- queries -------------------------------------------------------------------------
    def list(self) -> list[VersionInfo]:
        active = self.store.active_version()
        return [self._info(row, active) for row in self.store.list_model_versions()]

    def get(self, version: str) -> VersionInfo:
        return self._info(self._row(version), self.store.active_version())

    def active_version(self) -> str | None:
        return self.store.active_version()

    def load(self, version: str, warm_batch: int = 1) -> LoadedModel:
        """Loads a stored version; a file that went bad on disk is refused like a bad upload."""
        row = self._row(version)
        card = ModelCard.model_validate_json(row.card_json)
        path = self.models_dir / row.filename
        if not path.exists():
            # A replica without the shared models folder fetches the bytes from the store.
            blob = self.store.get_model_blob(row.sha256)
            if blob is not None and hashlib.sha256(blob).hexdigest() == row.sha256:
                _atomic_write(path, blob)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelRejectedError(f"model {version}: file missing ({exc.strerror})") from None
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise ModelRejectedError(f"model {version}: file on disk does not match its hash (corrupted)")
        return load_model(data, card, version, threads=self.ort_threads, warm_batch=warm_batch)

    # --- state changes -------------------------------------------------------------------
    def record_activation(self, version: str, actor: str, reason: str = "") -> None:
        self._row(version)
        self.store.record_activation(version, "activate", actor, reason)

    def rollback_target(self) -> str:
        stack = self.store.activation_stack()
        if len(stack) < 2:
            raise ConflictError("rollback: no earlier active version to return to")
        return stack[-2]

    def record_rollback(self, actor: str, reason: str = "") -> str:
        target = self.rollback_target()
        self.store.record_activation(target, "rollback", actor, reason)
        return target

    # --- helpers -------------------------------------------------------------------------
    def _row(self, version: str) -> ModelVersion:
        if not VERSION_RE.match(version or ""):
            raise NotFoundError(f"version: {version!r} is not a version id (16 hex digits)")
        row = self.store.get_model_version(version)
        if row is None:
            raise NotFoundError(f"version: no model version {version}")
        return row

    @staticmethod
    def _info(row: ModelVersion, active: str | None) -> VersionInfo:
        card = ModelCard.model_validate_json(row.card_json)
        return VersionInfo(row.version, row.name, row.sha256, row.created_at, card, row.version == active)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
