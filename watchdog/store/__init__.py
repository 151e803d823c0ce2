"""The only code that speaks SQL. SQLite (WAL) by default, PostgreSQL by URL.

`Store` gathers one mixin per concern; each mixin runs its SQL through `Database.retry`.
"""

from __future__ import annotations

from distill_watchdog.store.db import SCHEMA_VERSION, Database, masked_url
from distill_watchdog.store.models import ModelStore
from distill_watchdog.store.runs import LeaderLock, RunStore
from distill_watchdog.store.samples import SampleBatch, SampleColumns, SampleStore, TeacherColumn
from distill_watchdog.store.tables import Activation, AuditEvent, ModelVersion

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
