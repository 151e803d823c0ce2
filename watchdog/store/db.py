"""Engine set-up, schema creation and upgrade, and reconnects: the database plumbing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, SQLModel, create_engine, select

from distill_watchdog import metrics
from distill_watchdog.errors import WatchdogError
from distill_watchdog.store.migrate import MIGRATIONS
from distill_watchdog.store.tables import SchemaInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: vectors as float32 bytes; 3: integer keys of sampled rows (migrate.py)

T = TypeVar("T")


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here; SQLite paths get their folder created."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return url


def masked_url(url: str) -> str:
    """The URL fit for messages and logs: its password replaced by `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show none of it
        return "(the store URL)"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800)
    return engine


class Database:
    """Owns the engine; every store module runs its SQL through `session()` or `retry()`."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)
        self.is_postgres = self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def retry(self, operation: str, fn: Callable[[Session], T], attempts: int = 3) -> T:
        """Runs `fn` in a transaction; a dropped connection (database restart) is retried."""
        for attempt in range(1, attempts + 1):
            try:
                with self.session() as session:
                    result = fn(session)
                    session.commit()
                    return result
            except (OperationalError, DBAPIError) as exc:
                if not getattr(exc, "connection_invalidated", False) and not isinstance(
                    exc, OperationalError
                ):
                    raise
                metrics.store_errors_total.labels(operation=operation).inc()
                if attempt == attempts:
                    raise
                log.warning("store: %s failed (%s); retrying", operation, exc.__class__.__name__)
                self.engine.dispose()
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def ensure_schema(self) -> int:
        """Creates missing tables and upgrades older schemas; refuses one newer than this build."""
        with self._schema_lock():
            with self.engine.begin() as conn:
                SQLModel.metadata.create_all(conn)
                info = Session(bind=conn).exec(select(SchemaInfo)).first()
                current = info.version if info else SCHEMA_VERSION
            if current > SCHEMA_VERSION:
                raise WatchdogError(
                    f"store: database schema version {current} is newer than this build's {SCHEMA_VERSION}"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                # Batched, each batch committed: an interrupted upgrade resumes at the next start.
                MIGRATIONS[version](self.engine)
                log.info("store: schema upgraded to version %d", version)
            with self.engine.begin() as conn, Session(bind=conn) as session:
                info = session.exec(select(SchemaInfo)).first() or SchemaInfo(id=1, version=SCHEMA_VERSION)
                info.version = SCHEMA_VERSION
                session.add(info)
                session.flush()
        return SCHEMA_VERSION

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """PostgreSQL: replicas starting together wait for the one creating or upgrading the schema
        (a session lock, held across the upgrade's many transactions). SQLite: writes serialise."""
        if not self.is_postgres:
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727001)"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727001)"))
                conn.commit()

    def schema_version(self) -> int:
        with self.session() as session:
            info = session.exec(select(SchemaInfo)).first()
            return info.version if info else 0

    def close(self) -> None:
        self.engine.dispose()
