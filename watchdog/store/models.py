"""SQL for student versions, activations and the audit trail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
from sqlmodel import Session, col, select

from distill_watchdog.store.db import Database
from distill_watchdog.store.tables import Activation, AuditEvent, ModelBlob, ModelVersion


def replay(rows: list[Activation]) -> Iterator[tuple[Activation, list[str]]]:
    """Replays the activation history (`activate` pushes, `rollback` pops): the stack after each row."""
    stack: list[str] = []
    for row in rows:
        if row.kind == "rollback":
            if len(stack) > 1:
                stack.pop()
        elif not stack or stack[-1] != row.version:
            stack.append(row.version)
        yield row, stack


def active_stack(rows: list[Activation]) -> list[str]:
    last: list[str] = []
    for _, stack in replay(rows):
        last = stack
    return last


class ModelStore:
    db: Database

    def add_model_version(self, row: ModelVersion) -> ModelVersion:
        def op(session: Session) -> ModelVersion:
            existing = session.get(ModelVersion, row.version)
            if existing is not None:
                return existing
            session.add(row)
            return row

        return self.db.retry("add_model_version", op)

    def add_model_blob(self, sha256: str, data: bytes) -> None:
        def op(session: Session) -> None:
            if session.get(ModelBlob, sha256) is None:
                session.add(ModelBlob(sha256=sha256, data=data))

        self.db.retry("add_model_blob", op)

    def get_model_blob(self, sha256: str) -> bytes | None:
        def op(session: Session) -> bytes | None:
            row = session.get(ModelBlob, sha256)
            return bytes(row.data) if row is not None else None

        return self.db.retry("get_model_blob", op)

    def get_model_version(self, version: str) -> ModelVersion | None:
        return self.db.retry("get_model_version", lambda s: s.get(ModelVersion, version))

    def list_model_versions(self) -> list[ModelVersion]:
        return self.db.retry(
            "list_model_versions",
            lambda s: list(s.exec(select(ModelVersion).order_by(col(ModelVersion.created_at)))),
        )

    def _activations(self, session: Session) -> list[Activation]:
        return list(session.exec(select(Activation).order_by(col(Activation.id))))

    def activation_stack(self) -> list[str]:
        return self.db.retry("activation_stack", lambda s: active_stack(self._activations(s)))

    def activation_history(self) -> list[tuple[float, str]]:
        """(time, the version active from then on) for each change of the active version, oldest first."""

        def op(session: Session) -> list[tuple[float, str]]:
            out: list[tuple[float, str]] = []
            for row, stack in replay(self._activations(session)):
                if stack and (not out or out[-1][1] != stack[-1]):
                    out.append((row.at, stack[-1]))
            return out

        return self.db.retry("activation_history", op)

    def active_version(self) -> str | None:
        stack = self.activation_stack()
        return stack[-1] if stack else None

    def record_activation(self, version: str, kind: str, actor: str, reason: str = "") -> None:
        def op(session: Session) -> None:
            session.add(Activation(version=version, kind=kind, actor=actor, reason=reason, at=time.time()))
            session.add(
                AuditEvent(
                    at=time.time(),
                    actor=actor,
                    action=f"model.{kind}",
                    subject=version,
                    detail_json=orjson.dumps({"reason": reason}).decode(),
                )
            )

        self.db.retry("record_activation", op)

    def audit(self, actor: str, action: str, subject: str = "", **detail: Any) -> None:
        row = AuditEvent(
            at=time.time(),
            actor=actor,
            action=action,
            subject=subject,
            detail_json=orjson.dumps(detail, default=str).decode(),
        )
        self.db.retry("audit", lambda s: s.add(row))

    def audit_events(self, limit: int = 100) -> list[AuditEvent]:
        return self.db.retry(
            "audit_events",
            lambda s: list(s.exec(select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit))),
        )
