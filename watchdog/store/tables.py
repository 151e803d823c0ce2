"""SQLModel tables. Times are UNIX epoch seconds (float): one representation on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class SchemaInfo(SQLModel, table=True):
    __tablename__ = "schema_info"
    id: int = Field(default=1, primary_key=True)
    version: int


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    version: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    sha256: str = Field(max_length=64, index=True)
    filename: str = Field(max_length=200)
    card_json: str
    created_at: float
    parent_version: str | None = Field(default=None, max_length=64)


class Activation(SQLModel, table=True):
    """Append-only history; the active version is derived from it (see ModelStore.active_version)."""

    __tablename__ = "activations"
    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=64)
    kind: str = Field(max_length=16)  # activate | rollback
    actor: str = Field(max_length=200)
    reason: str = ""
    at: float


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=64)
    subject: str = Field(default="", max_length=200)
    detail_json: str = "{}"
