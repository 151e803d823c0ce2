"""SQL for sampled rows, teacher outputs, teacher pins and events, the frozen eval set, feedback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import func, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from distill_watchdog.store.db import Database
from distill_watchdog.store.rows import SAMPLE_COLUMNS, insert_rows
from distill_watchdog.store.tables import EvalRow, Sample, TeacherEvent, TeacherOutput, TeacherPin
from distill_watchdog.store.vectors import DTYPE, from_blob, to_blobs

_CHUNK = 500  # rows per IN (...) list: well below SQLite's and PostgreSQL's parameter limits
_LABEL_CHUNK = 5000  # labels per UPDATE: 2 parameters each, below SQLite's 32,766
WINDOW_CHUNK = 50_000  # rows per query when reading a window (bounds the driver's rows in memory)


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


@dataclass
class SampleColumns:
    """Sampled rows as the store holds them, newest first, one list per column (vectors as
    float32 bytes, slices as JSON text), and the teacher answers of those rows."""

    ids: list[int] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    features: list[bytes] = field(default_factory=list)
    student_probs: list[bytes] = field(default_factory=list)
    student_versions: list[str] = field(default_factory=list)
    slices: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    # (sample id, teacher, version, quarantined (0/1 on SQLite), probs bytes or None when the
    # teacher failed)
    outputs: list[tuple[int, str, str, bool, bytes | None]] = field(default_factory=list)


_OUTPUTS_BY_KEY = (
    "SELECT sample_id, teacher, version, quarantined, probs FROM teacher_outputs "
    "WHERE sample_id >= {mark} AND sample_id <= {mark}"
)
_OUTPUTS_BY_TIME = (
    "SELECT t.sample_id, t.teacher, t.version, t.quarantined, t.probs FROM teacher_outputs t "
    "JOIN samples s ON t.sample_id = s.id WHERE s.at >= {mark} AND s.at <= {mark}"
)
_KEY_SPREAD = 4  # a chunk whose keys span more than this many times its rows is joined by time


@dataclass(slots=True)
class _Page:
    cols: SampleColumns  # the rows of the wanted shape, with their answers
    read: int  # rows the query returned, of any shape
    last: tuple[float, int] | None  # the (at, id) of the last of them: where the next page starts


def _page(
    session: Session, sql: str, params: tuple[Any, ...], mark: str, sizes: tuple[int | None, int | None]
) -> _Page:
    """One chunk of sampled rows as columns, with the teacher answers of those rows; with
    `sizes` (bytes of features, of student probabilities), only rows of that shape.

    Through the driver's own cursor: plain tuples, no per-row result objects, which were most
    of the Python time of a million-row window. The shape is checked here, not in SQL:
    PostgreSQL guessed that `length(...) = n` kept almost no row, and read and sorted the
    whole table for every chunk instead of walking the `at` index. Keys follow insertion order,
    which follows time, so a chunk's answers are one range scan of the answers' key; a chunk
    whose keys are scattered (rows stored far out of time order) is joined on its time range.
    """
    driver: Any = session.connection().connection.dbapi_connection
    # psycopg: binary results (bytea as bytes, not hex text the server encodes and we decode)
    postgres = session.get_bind().dialect.name == "postgresql"
    cursor = driver.cursor(binary=True) if postgres else driver.cursor()
    try:
        cursor.execute(sql, params)
        read = cursor.fetchall()
        if not read:
            return _Page(SampleColumns(), 0, None)
        fb, cb = sizes
        rows = read
        if fb is not None or cb is not None:
            rows = [r for r in read if (fb is None or len(r[2]) == fb) and (cb is None or len(r[3]) == cb)]
        page = _Page(SampleColumns(), len(read), (read[-1][1], read[-1][0]))
        if not rows:
            return page
        cols = page.cols = SampleColumns(*(list(c) for c in zip(*rows, strict=True)))
        ids = np.asarray(cols.ids, np.int64)
        low, high = int(ids.min()), int(ids.max())
        if high - low < _KEY_SPREAD * len(ids):
            cursor.execute(_OUTPUTS_BY_KEY.format(mark=mark), (low, high))
        else:
            cursor.execute(_OUTPUTS_BY_TIME.format(mark=mark), (min(cols.at), max(cols.at)))
        found = cursor.fetchall()
    finally:
        cursor.close()
    if found:  # only the answers of this chunk's rows (not of rows skipped or in other chunks)
        keys = np.fromiter((r[0] for r in found), np.int64, len(found))
        mine = np.isin(keys, ids)
        cols.outputs = found if mine.all() else [found[k] for k in np.flatnonzero(mine)]
    return page


@dataclass(slots=True)
class TeacherColumn:
    """One teacher's answer for some rows of a `SampleBatch` (one call: one version)."""

    rows: list[int]  # indices into the batch
    version: str  # "" when the call failed
    probs: Any  # [len(rows), C] float32, or None when the call failed
    quarantined: bool = False  # settled at write time, by the pins as they are then


@dataclass(slots=True)
class SampleBatch:
    """Sampled rows as columns: what the serving process hands to a teacher process for storing.

    A few arrays pickle in microseconds where one object per row (each with its own small
    arrays) costs the serving process's GIL a few milliseconds per write; the rows are expanded
    into insert rows, with their ids, in the process that writes them.
    """

    request_ids: list[str]
    at: list[float]
    features: Any  # [N, D] float32
    student_probs: Any  # [N, C] float32
    student_versions: list[str]
    slices: list[dict[str, str]]
    teachers: dict[str, TeacherColumn]

    def __len__(self) -> int:
        return len(self.request_ids)

    def outcomes(self) -> dict[str, int]:
        """Rows by outcome: quarantined (any quarantined output), stored (answered) or teacher_error."""
        quarantined, answered = set(), set()
        for column in self.teachers.values():
            if column.probs is not None:
                (quarantined if column.quarantined else answered).update(column.rows)
        answered -= quarantined
        return {
            "quarantined": len(quarantined),
            "stored": len(answered),
            "teacher_error": len(self) - len(quarantined) - len(answered),
        }

    def rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The insert tuples of both tables (`rows.SAMPLE_COLUMNS`, `rows.OUTPUT_COLUMNS` with the
        row's index in this batch as its sample), built from the columns (no object per row)."""
        n = len(self)
        quarantined = [False] * n
        outputs: list[tuple[Any, ...]] = []
        for name, column in self.teachers.items():
            flag = column.quarantined and column.probs is not None
            answers = [None] * len(column.rows) if column.probs is None else to_blobs(column.probs)
            for j, probs in zip(column.rows, answers, strict=True):
                outputs.append((j, name, column.version, probs, flag))
                if flag:
                    quarantined[j] = True
        features, student = to_blobs(self.features), to_blobs(self.student_probs)
        samples = [
            (
                self.request_ids[j],
                self.at[j],
                features[j],
                student[j],
                self.student_versions[j],
                dumps(self.slices[j]),
                quarantined[j],
            )
            for j in range(n)
        ]
        return samples, outputs


# How sampled rows reach PostgreSQL: "copy" (COPY ... FROM STDIN, binary) or "executemany"
# (psycopg's pipelined batches). bench/volume.py measures both on the same store.
PG_INSERT = "copy"


class SampleStore:
    db: Database

    # --- samples ------------------------------------------------------------------------------

    def add_sample_batches(self, batches: list[SampleBatch]) -> int:
        """Bulk insert of what the sampling worker gathered, in one transaction."""
        samples: list[tuple[Any, ...]] = []
        outputs: list[tuple[Any, ...]] = []
        for batch in batches:
            rows, answers = batch.rows()
            offset = len(samples)
            samples += rows
            outputs += [(j + offset, *rest) for j, *rest in answers] if offset else answers
        if not samples:
            return 0
        copy = PG_INSERT == "copy"

        def op(session: Session) -> int:
            return len(insert_rows(session.connection(), SAMPLE_COLUMNS, samples, outputs, copy))

        return self.db.retry("add_samples", op)

    def count_samples(self, quarantined: bool | None = None, after: float | None = None) -> int:
        """Stored rows (`after`: only those sampled later than this time)."""

        def op(session: Session) -> int:
            query = select(func.count()).select_from(Sample)
            if quarantined is not None:
                query = query.where(col(Sample.quarantined) == quarantined)
            if after is not None:
                query = query.where(col(Sample.at) > after)
            return int(session.exec(query).one())

        return self.db.retry("count_samples", op)

    def count_slice_rows(self, label: str, after: float) -> int:
        """Unquarantined rows of slice `label` (`key=value`, labels joined by `,`) sampled later
        than `after`. Slices are stored as compact JSON, so each pair is matched as text."""
        query = (
            select(func.count())
            .select_from(Sample)
            .where(col(Sample.at) > after, col(Sample.quarantined).is_(False))
        )
        for part in label.split(","):
            key, _, value = part.partition("=")
            pair = dumps({key: value})[1:-1]
            escaped = pair.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(col(Sample.slice_json).like(f"%{escaped}%", escape="\\"))
        return self.db.retry("count_slice_rows", lambda session: int(session.exec(query).one()))

    def sample_chunks(
        self,
        limit: int,
        since: float | None = None,
        features: int | None = None,
        classes: int | None = None,
        chunk: int | None = None,
    ) -> Iterator[SampleColumns]:
        """The newest `limit` unquarantined rows (at or after `since`), newest first, `chunk`
        rows at a time, each chunk with its teacher outputs; with `features`/`classes`, only rows
        whose vectors have that many values (rows of a model with another shape are skipped).

        Each chunk is its own short query (keyset on `at`, `id`), so a window of a million rows
        never holds more than one chunk of driver rows and no transaction stays open between
        chunks. Rows of another shape are read and left out: they do not count against `limit`.
        """
        chunk = chunk or WINDOW_CHUNK
        mark = "?" if self.db.engine.dialect.paramstyle == "qmark" else "%s"
        where, params = ["NOT quarantined"], []
        if since is not None:
            where.append(f"at >= {mark}")
            params.append(since)
        sizes = (
            None if features is None else features * DTYPE.itemsize,
            None if classes is None else classes * DTYPE.itemsize,
        )
        columns = "id, at, features, student_probs, student_version, slice_json, label"
        left, after = limit, None
        while left > 0:
            clauses, values = list(where), list(params)
            if after is not None:  # keyset: rows after the previous chunk's last (at, id)
                clauses.append(f"at <= {mark} AND NOT (at = {mark} AND id >= {mark})")
                values += [after[0], after[0], after[1]]
            asked = int(min(chunk, left))
            sql = (
                f"SELECT {columns} FROM {Sample.__tablename__} WHERE {' AND '.join(clauses)} "
                f"ORDER BY at DESC, id DESC LIMIT {asked}"
            )
            page = self.db.retry(
                "sample_chunks", lambda session, q=sql, v=tuple(values): _page(session, q, v, mark, sizes)
            )
            if page.cols.ids:
                yield page.cols
            left -= len(page.cols.ids)
            if page.read < asked or page.last is None:
                return  # the query found fewer rows than it asked for: no more
            after = page.last

    def add_labels(self, labels: list[tuple[str, int]]) -> tuple[int, list[str]]:
        """Joins true labels to sampled rows by request id: (labels applied, ids not found).

        One UPDATE per `_LABEL_CHUNK` labels, joined to the labels as a VALUES list, that returns
        the ids it found: a statement per label made a 30,000-label request a 5-s transaction.
        The same id twice in one request: the last label wins.
        """
        now = time.time()
        latest = dict(labels)
        mark = "?" if self.db.engine.dialect.paramstyle == "qmark" else "%s"

        def op(session: Session) -> tuple[int, list[str]]:
            connection = session.connection()
            known: set[str] = set()
            items = list(latest.items())
            for start in range(0, len(items), _LABEL_CHUNK):
                chunk = items[start : start + _LABEL_CHUNK]
                rows = ", ".join([f"({mark}, {mark})"] * len(chunk))
                statement = (
                    f"WITH given(request_id, label) AS (VALUES {rows}) "
                    f"UPDATE {Sample.__tablename__} SET label = CAST(given.label AS INTEGER), "
                    f"labelled_at = {mark} FROM given "
                    f"WHERE {Sample.__tablename__}.request_id = given.request_id "
                    f"RETURNING {Sample.__tablename__}.request_id"
                )
                params = (*(v for pair in chunk for v in pair), now)
                known.update(r[0] for r in connection.exec_driver_sql(statement, params))
            accepted = sum(1 for rid, _ in labels if rid in known)
            return accepted, [rid for rid in latest if rid not in known]

        return self.db.retry("add_labels", op)

    def release_quarantine(self, teacher: str, version: str) -> int:
        """A version passed re-evaluation or was accepted: its rows count again."""

        def op(session: Session) -> int:
            session.execute(
                update(TeacherOutput)
                .where(col(TeacherOutput.teacher) == teacher, col(TeacherOutput.version) == version)
                .values(quarantined=False)
            )
            still = select(TeacherOutput.sample_id).where(col(TeacherOutput.quarantined).is_(True))
            result = session.execute(
                update(Sample)
                .where(col(Sample.quarantined).is_(True), col(Sample.id).not_in(still))
                .values(quarantined=False)
            )
            return int(result.rowcount or 0)

        return self.db.retry("release_quarantine", op)

    # --- teacher pins and events -----------------------------------------------------------

    def list_pins(self) -> list[TeacherPin]:
        return self.db.retry("list_pins", lambda s: list(s.exec(select(TeacherPin))))

    def save_pin(self, pin: TeacherPin, event: TeacherEvent | None = None) -> None:
        """Writes the pin and (optionally) the event that changed it, in one transaction."""

        def op(session: Session) -> None:
            pin.updated_at = time.time()
            session.merge(pin)
            if event is not None:
                session.add(event)

        self.db.retry("save_pin", op)

    def teacher_events(self, teacher: str | None = None, limit: int = 50) -> list[TeacherEvent]:
        def op(session: Session) -> list[TeacherEvent]:
            query = select(TeacherEvent).order_by(col(TeacherEvent.id).desc()).limit(limit)
            if teacher is not None:
                query = query.where(col(TeacherEvent.teacher) == teacher)
            return list(session.exec(query))

        return self.db.retry("teacher_events", op)

    # --- frozen evaluation set ---------------------------------------------------------------

    def eval_count(self, teacher: str) -> int:
        return self.db.retry(
            "eval_count",
            lambda s: int(
                s.exec(select(func.count()).select_from(EvalRow).where(col(EvalRow.teacher) == teacher)).one()
            ),
        )

    def add_eval_rows(self, rows: list[EvalRow]) -> None:
        def op(session: Session) -> None:
            session.add_all(rows)

        self.db.retry("add_eval_rows", op)

    def eval_rows(self, teacher: str) -> list[EvalRow]:
        return self.db.retry(
            "eval_rows",
            lambda s: list(
                s.exec(select(EvalRow).where(col(EvalRow.teacher) == teacher).order_by(col(EvalRow.ordinal)))
            ),
        )

    def count_teacher_labelled(self, teacher: str, version: str, up_to: int) -> int:
        """How many samples `first_teacher_labelled` would find (at most `up_to`), without loading them."""

        def op(session: Session) -> int:
            found = sa_select(TeacherOutput.sample_id).where(*_answered_by(teacher, version)).limit(up_to)
            return int(session.exec(select(func.count()).select_from(found.subquery())).one())

        return self.db.retry("count_teacher_labelled", op)

    def first_teacher_labelled(self, teacher: str, version: str, limit: int) -> list[dict[str, Any]]:
        """The oldest unquarantined samples this teacher version answered (to freeze as eval set)."""

        def op(session: Session) -> list[dict[str, Any]]:
            query = (
                select(Sample, TeacherOutput)
                .join(TeacherOutput, col(TeacherOutput.sample_id) == col(Sample.id))
                .where(*_answered_by(teacher, version))
                .order_by(col(Sample.at))
                .limit(limit)
            )
            return [
                {
                    "features": from_blob(s.features),
                    "label": s.label,
                    "slices": orjson.loads(s.slice_json),
                    "probs": None if t.probs is None else from_blob(t.probs),
                }
                for s, t in session.exec(query)
            ]

        return self.db.retry("first_teacher_labelled", op)


def _answered_by(teacher: str, version: str) -> list[Any]:
    """Samples this teacher version answered, outside quarantine: what an eval set is frozen from."""
    return [
        col(TeacherOutput.teacher) == teacher,
        col(TeacherOutput.version) == version,
        col(TeacherOutput.probs).is_not(None),
        col(TeacherOutput.quarantined).is_(False),
    ]
