"""SQL for monitor cycles, policy decisions, redistillation runs, retention and the leader lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import delete, text
from sqlalchemy.engine import Connection, make_url
from sqlmodel import Session, col, select

from distill_watchdog.store.db import Database
from distill_watchdog.store.tables import DistillRun, MonitorCycle, PolicyDecision, Sample, TeacherOutput

LEADER_KEY = 727_002  # the PostgreSQL advisory lock id of the scheduler
RETENTION_BATCH = 10_000  # samples deleted per transaction
_IN_CHUNK = 500  # ids per IN (...) list


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class RunStore:
    db: Database

    # --- monitor cycles ------------------------------------------------------------------------

    def add_cycle(self, row: MonitorCycle) -> MonitorCycle:
        def op(session: Session) -> MonitorCycle:
            session.add(row)
            session.flush()
            return row

        return self.db.retry("add_cycle", op)

    def cycles_between(
        self, since: float, until: float | None = None, max_rows: int = 720
    ) -> list[MonitorCycle]:
        """Completed cycles in [since, until], oldest first: at most `max_rows` of them, spread evenly
        over the range (ids are read first; only the chosen rows' summaries are fetched)."""

        def op(session: Session) -> list[MonitorCycle]:
            query = select(MonitorCycle.id).where(
                col(MonitorCycle.at) >= since, col(MonitorCycle.outcome) == "ok"
            )
            if until is not None:
                query = query.where(col(MonitorCycle.at) <= until)
            ids = list(session.exec(query.order_by(col(MonitorCycle.id))))
            if len(ids) > max_rows:
                keep = max(2, max_rows)
                step = (len(ids) - 1) / (keep - 1)
                ids = [ids[round(i * step)] for i in range(keep)]
            if not ids:
                return []
            rows = select(MonitorCycle).where(col(MonitorCycle.id).in_(ids)).order_by(col(MonitorCycle.id))
            return list(session.exec(rows))

        return self.db.retry("cycles_between", op)

    def recent_cycles(self, limit: int = 20) -> list[MonitorCycle]:
        return self.db.retry(
            "recent_cycles",
            lambda s: list(s.exec(select(MonitorCycle).order_by(col(MonitorCycle.id).desc()).limit(limit))),
        )

    # --- policy decisions --------------------------------------------------------------------

    def add_decision(self, cycle_id: int | None, action: str, reason: str, numbers: dict[str, Any]) -> None:
        row = PolicyDecision(
            at=time.time(), cycle_id=cycle_id, action=action, reason=reason, numbers_json=_dumps(numbers)
        )
        self.db.retry("add_decision", lambda s: s.add(row))

    def recent_decisions(self, limit: int = 20) -> list[PolicyDecision]:
        return self.db.retry(
            "recent_decisions",
            lambda s: list(
                s.exec(select(PolicyDecision).order_by(col(PolicyDecision.id).desc()).limit(limit))
            ),
        )

    # --- runs ----------------------------------------------------------------------------------

    def add_run(self, row: DistillRun) -> DistillRun:
        return self.db.retry("add_run", lambda s: (s.add(row), row)[1])

    def get_run(self, run_id: str) -> DistillRun | None:
        return self.db.retry("get_run", lambda s: s.get(DistillRun, run_id))

    def list_runs(self, limit: int = 50) -> list[DistillRun]:
        return self.db.retry(
            "list_runs",
            lambda s: list(
                s.exec(select(DistillRun).order_by(col(DistillRun.created_at).desc()).limit(limit))
            ),
        )

    def runs_before(self, cutoff: float, statuses: tuple[str, ...]) -> list[DistillRun]:
        """Runs in one of `statuses` whose last change was before `cutoff`, oldest first."""
        query = select(DistillRun).where(
            col(DistillRun.updated_at) < cutoff, col(DistillRun.status).in_(statuses)
        )
        return self.db.retry(
            "runs_before", lambda s: list(s.exec(query.order_by(col(DistillRun.updated_at))))
        )

    def runs_between(self, since: float, limit: int = 200) -> list[DistillRun]:
        """Runs that started or changed state since `since`, oldest first."""
        changed = (col(DistillRun.created_at) >= since) | (col(DistillRun.updated_at) >= since)
        return self.db.retry(
            "runs_between",
            lambda s: list(
                s.exec(select(DistillRun).where(changed).order_by(col(DistillRun.created_at)).limit(limit))
            ),
        )

    def update_run(
        self, run_id: str, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> DistillRun | None:
        """Applies `changes` (`detail` merges into detail_json); None when the run is not in `expect`."""

        def op(session: Session) -> DistillRun | None:
            row = session.get(DistillRun, run_id, with_for_update=self.db.is_postgres)
            if row is None or (expect is not None and row.status not in expect):
                return None
            detail = changes.pop("detail", None)
            if detail:
                row.detail_json = _dumps({**orjson.loads(row.detail_json), **detail})
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = time.time()
            session.add(row)
            return row

        return self.db.retry("update_run", op)

    # --- retention -------------------------------------------------------------------------------

    def delete_before(self, cutoff: float, batch: int = RETENTION_BATCH) -> dict[str, int]:
        """Deletes samples (with their teacher outputs), cycles and decisions older than `cutoff`.

        Samples go `batch` at a time, oldest first, each batch its own transaction: deleting a
        day of rows at production volume in one statement held the write lock for as long as it
        ran, and serving's sample writes waited behind it.
        """
        counts = {"samples": 0, "teacher_outputs": 0, "cycles": 0, "decisions": 0}
        while True:
            done = self.db.retry("delete_before", lambda s: _delete_samples(s, cutoff, batch))
            counts["samples"] += done[0]
            counts["teacher_outputs"] += done[1]
            if done[0] < batch:
                break

        def op(session: Session) -> None:
            cycles = session.execute(delete(MonitorCycle).where(col(MonitorCycle.at) < cutoff))
            decisions = session.execute(delete(PolicyDecision).where(col(PolicyDecision.at) < cutoff))
            counts["cycles"] = int(cycles.rowcount or 0)
            counts["decisions"] = int(decisions.rowcount or 0)

        self.db.retry("delete_before", op)
        return counts

    def leader_lock(self) -> LeaderLock:
        return LeaderLock(self.db)


def _delete_samples(session: Session, cutoff: float, batch: int) -> tuple[int, int]:
    """Up to `batch` of the oldest samples before `cutoff` and their teacher outputs."""
    ids = list(
        session.execute(
            select(Sample.id).where(col(Sample.at) < cutoff).order_by(col(Sample.at)).limit(batch)
        ).scalars()
    )
    if session.get_bind().dialect.name == "postgresql":  # one array parameter per statement
        answers = session.execute(
            text("DELETE FROM teacher_outputs WHERE sample_id = ANY(:ids)"), {"ids": ids}
        )
        rows = session.execute(text("DELETE FROM samples WHERE id = ANY(:ids)"), {"ids": ids})
        return int(rows.rowcount or 0), int(answers.rowcount or 0)
    samples = outputs = 0
    for start in range(0, len(ids), _IN_CHUNK):
        part = ids[start : start + _IN_CHUNK]
        outputs += int(
            session.execute(delete(TeacherOutput).where(col(TeacherOutput.sample_id).in_(part))).rowcount or 0
        )
        samples += int(session.execute(delete(Sample).where(col(Sample.id).in_(part))).rowcount or 0)
    return samples, outputs


class LeaderLock:
    """Who runs the scheduler: a PostgreSQL session advisory lock, or a file lock beside SQLite.

    The PostgreSQL lock lives on one dedicated connection: if the holder dies, the server
    drops its session and the lock with it, and the next replica to try takes over.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None or self._fd is not None

    def poll(self) -> bool:
        """Tries to take the lock (or checks that it is still held); True while held. Blocking."""
        if self.db.is_postgres:
            return self._poll_postgres()
        return self._poll_file()

    def _poll_postgres(self) -> bool:
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1")).scalar()
                return True
            conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_KEY}).scalar())
            if got:
                self._conn = conn
            else:
                conn.close()
            return got
        except Exception:
            self.release()
            return False

    def _poll_file(self) -> bool:
        if self._fd is not None:
            return True
        database = make_url(self.db.url).database
        if not database or database == ":memory:":
            self._fd = -1  # one process, one node
            return True
        fd = os.open(str(Path(database).with_suffix(".leader")), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # a lost connection has already freed the lock
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_KEY})
            with contextlib.suppress(Exception):
                conn.close()
        if self._fd is not None:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = None
