"""The only code that speaks SQL. SQLite (WAL) by default, PostgreSQL by URL.

`Store` gathers one mixin per concern; each mixin runs its SQL through `Database.retry`.
"""

from __future__ import annotations

from .db import SCHEMA_VERSION, Database, masked_url
from .models import ModelStore
from .runs import LeaderLock, RunStore
from .samples import SampleBatch, SampleColumns, SampleStore, TeacherColumn
from .tables import Activation, AuditEvent, ModelVersion

__all__ = [
    "SCHEMA_VERSION",
    "Activation",
    "AuditEvent",
    "LeaderLock",
    "ModelVersion",
    "SampleBatch",
    "SampleColumns",
    "Store",
    "TeacherColumn",
    "masked_url",
]


class Store(ModelStore, SampleStore, RunStore):
    def __init__(self, url: str, create: bool = True) -> None:
        self.db = Database(url)
        if create:
            self.db.ensure_schema()

    @property
    def is_postgres(self) -> bool:
        return self.db.is_postgres

    def close(self) -> None:
        self.db.close()
