"""SQLModel tables. Times are UNIX epoch seconds (float): one representation on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, text
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


class ModelBlob(SQLModel, table=True):
    """The ONNX bytes, so a replica without the shared models folder can fetch a version."""

    __tablename__ = "model_blobs"
    sha256: str = Field(primary_key=True, max_length=64)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


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


# --- sampling and teachers (store/samples.py) ---------------------------------------------


# A 64-bit key on PostgreSQL (BIGSERIAL); on SQLite the INTEGER PRIMARY KEY is the rowid itself.
RowKey = BigInteger().with_variant(Integer(), "sqlite")


class Sample(SQLModel, table=True):
    """One sampled production row; `quarantined` rows are kept out of training and comparison.

    `id` is an integer the store assigns in insertion order, internal to the store: users
    identify rows by `request_id`. Fixed-width columns come first so PostgreSQL pads no bytes
    between them. `request_id` has a hash index on PostgreSQL (labels look it up by equality
    only; a hash entry is 4 bytes whatever the id's length); `quarantined` is indexed only
    where true, the rare rows its queries look for.
    """

    __tablename__ = "samples"
    __table_args__ = (
        Index("ix_samples_request_id", "request_id", postgresql_using="hash"),
        Index(
            "ix_samples_quarantined",
            "quarantined",
            sqlite_where=text("quarantined"),
            postgresql_where=text("quarantined"),
        ),
    )
    id: int | None = Field(default=None, sa_column=Column(RowKey, primary_key=True, autoincrement=True))
    at: float = Field(index=True)
    labelled_at: float | None = None
    label: int | None = None
    quarantined: bool = False
    features: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # float32 (vectors.py)
    student_probs: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    request_id: str = Field(max_length=128)
    student_version: str = Field(max_length=64)
    slice_json: str = "{}"


class TeacherOutput(SQLModel, table=True):
    """A teacher's answer for one sample; `probs` (float32) is null when the teacher failed.

    Keyed by (sample, teacher), one answer per teacher and row; on SQLite the rows live in
    that key's B-tree (WITHOUT ROWID), so a sample's answers need no second index.
    """

    __tablename__ = "teacher_outputs"
    __table_args__ = {"sqlite_with_rowid": False}
    sample_id: int = Field(sa_column=Column(RowKey, primary_key=True, autoincrement=False))
    teacher: str = Field(primary_key=True, max_length=200)
    quarantined: bool = False
    version: str = Field(default="", max_length=200)
    probs: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class TeacherPin(SQLModel, table=True):
    """The pinned version per teacher and, while quarantined or paused, the candidate version."""

    __tablename__ = "teacher_pins"
    teacher: str = Field(primary_key=True, max_length=200)
    pinned_version: str | None = Field(default=None, max_length=200)
    candidate_version: str | None = Field(default=None, max_length=200)
    state: str = Field(default="ok", max_length=16)  # ok | quarantine | paused
    updated_at: float


class TeacherEvent(SQLModel, table=True):
    __tablename__ = "teacher_events"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    teacher: str = Field(max_length=200)
    kind: str = Field(max_length=32)  # pinned | changed | accepted | reeval_passed | reeval_failed
    from_version: str | None = Field(default=None, max_length=200)
    to_version: str | None = Field(default=None, max_length=200)
    detail_json: str = "{}"


class EvalRow(SQLModel, table=True):
    """The frozen evaluation set per teacher, with the teacher version that labelled it. Never trained on."""

    __tablename__ = "eval_rows"
    id: int | None = Field(default=None, primary_key=True)
    teacher: str = Field(index=True, max_length=200)
    ordinal: int
    features: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # float32 (vectors.py)
    label: int | None = None
    slice: str = Field(default="", max_length=200)
    probs: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    version: str = Field(max_length=200)
    source: str = Field(max_length=16)  # file | samples


# --- monitor, policy and redistillation runs (store/runs.py) ----------------------------------


class MonitorCycle(SQLModel, table=True):
    """One monitor cycle's results (overall, per slice, drift, weak slices) as JSON."""

    __tablename__ = "monitor_cycles"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    student_version: str = Field(default="", max_length=64)
    rows: int = 0
    seconds: float = 0.0
    outcome: str = Field(default="ok", max_length=16)  # ok | skipped | failed
    summary_json: str = "{}"


class PolicyDecision(SQLModel, table=True):
    """What the policy decided after a cycle, and the numbers it decided on."""

    __tablename__ = "policy_decisions"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    cycle_id: int | None = None
    action: str = Field(max_length=16)  # ok | hold | trigger | blocked
    reason: str = ""
    numbers_json: str = "{}"


class DistillRun(SQLModel, table=True):
    """A redistillation run: running -> failed | rejected | pending -> promoted | declined."""

    __tablename__ = "distill_runs"
    id: str = Field(primary_key=True, max_length=32)
    created_at: float = Field(index=True)
    updated_at: float
    status: str = Field(max_length=16, index=True)
    trigger: str = Field(default="policy", max_length=16)  # policy | manual
    parent_version: str = Field(default="", max_length=64)
    candidate_version: str | None = Field(default=None, max_length=64)
    run_dir: str = ""
    detail_json: str = "{}"
