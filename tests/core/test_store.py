"""The store on SQLite (WAL) and PostgreSQL: schema versioning and the activation history."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from distill_watchdog.errors import WatchdogError
from distill_watchdog.store import SCHEMA_VERSION, Activation, Store
from distill_watchdog.store.models import active_stack


def test_schema_created_with_version_and_idempotent(store_url):
    store = Store(store_url)
    assert store.db.schema_version() == SCHEMA_VERSION
    Store(store_url)  # a second start (another replica) changes nothing
    assert store.db.schema_version() == SCHEMA_VERSION


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    with store.db.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"


def test_refuses_a_schema_newer_than_this_build(store_url):
    store = Store(store_url)
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_info SET version = :v"), {"v": SCHEMA_VERSION + 1})
    with pytest.raises(WatchdogError, match="newer than this build"):
        Store(store_url)


def test_upgrade_from_an_older_schema_applies_migrations(store_url, monkeypatch):
    from distill_watchdog.store import db

    Store(store_url)
    monkeypatch.setattr(db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)

    def add_note(engine: sa.Engine) -> bool:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_events ADD COLUMN note VARCHAR(20)"))
        return True

    monkeypatch.setitem(db.MIGRATIONS, SCHEMA_VERSION + 1, add_note)
    store = Store(store_url)
    assert store.db.schema_version() == SCHEMA_VERSION + 1
    with store.db.engine.connect() as conn:
        conn.execute(sa.text("SELECT note FROM audit_events"))


def _rows(*events: tuple[str, str]) -> list[Activation]:
    return [Activation(version=v, kind=k, actor="t", at=0.0) for k, v in events]


def test_activation_stack_replays_history():
    assert active_stack(_rows(("activate", "a"), ("activate", "b"), ("activate", "c"))) == ["a", "b", "c"]
    assert active_stack(_rows(("activate", "a"), ("activate", "b"), ("rollback", "a"))) == ["a"]
    stack = active_stack(
        _rows(("activate", "a"), ("activate", "b"), ("activate", "c"), ("rollback", "b"), ("rollback", "a"))
    )
    assert stack == ["a"]
    assert active_stack(_rows(("activate", "a"), ("activate", "a"))) == ["a"]


def test_activation_and_audit_roundtrip(store_url):
    store = Store(store_url)
    store.record_activation("aaaaaaaaaaaaaaaa", "activate", "cli", "first")
    store.record_activation("bbbbbbbbbbbbbbbb", "activate", "cli")
    assert store.active_version() == "bbbbbbbbbbbbbbbb"
    store.record_activation("aaaaaaaaaaaaaaaa", "rollback", "cli")
    assert store.active_version() == "aaaaaaaaaaaaaaaa"
    actions = [e.action for e in store.audit_events()]
    assert actions == ["model.rollback", "model.activate", "model.activate"]
