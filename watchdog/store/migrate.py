"""Schema upgrades of existing stores, one function per version, each resumable.

Version 2 stores vectors as float32 bytes instead of JSON text. Rows are converted in
batches, each its own transaction, so a store of millions of rows is never locked for long and
an interrupted upgrade continues where it stopped (rows whose new column is still empty).
The old columns are dropped once every row is converted; only then is the version written.

Version 3 keys sampled rows by integers the store assigns instead of 32-character text ids.
The old tables are renamed aside and their rows moved into new tables in batches, each
batch's rows deleted from the old tables in the transaction that writes them anew: an
interrupted upgrade resumes with the rows still in the old tables, and none is moved twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from distill_watchdog.store.rows import OUTPUTS, SAMPLE_COLUMNS, SAMPLES, insert_rows
from distill_watchdog.store.tables import Sample, TeacherOutput
from distill_watchdog.store.vectors import to_blob

log = logging.getLogger(__name__)

BATCH = 5_000  # rows per conversion transaction

Pairs = list[tuple[str, str, bool]]
# table -> (key column, [(JSON text column, float32 bytes column, nullable)])
BINARY_COLUMNS: dict[str, tuple[str, Pairs]] = {
    "samples": ("id", [("features_json", "features", False), ("student_probs_json", "student_probs", False)]),
    "teacher_outputs": ("id", [("probs_json", "probs", True)]),
    "eval_rows": ("id", [("features_json", "features", False), ("probs_json", "probs", False)]),
}


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def _convert_batch(conn: Connection, table: str, key: str, pairs: Pairs, after: object) -> object:
    """Converts up to BATCH rows with keys above `after`; returns the last key (None when done)."""
    old = [o for o, _, _ in pairs]
    first_old, first_new = pairs[0][0], pairs[0][1]
    where = f"{first_new} IS NULL AND {first_old} IS NOT NULL"
    if after is not None:
        where += f" AND {key} > :after"
    rows = conn.execute(
        text(f"SELECT {key}, {', '.join(old)} FROM {table} WHERE {where} ORDER BY {key} LIMIT {BATCH}"),
        {"after": after},
    ).all()
    if not rows:
        return None
    sets = ", ".join(f"{new} = :{new}" for _, new, _ in pairs)
    news = [new for _, new, _ in pairs]
    params = [
        {key: row[0]}
        | {new: None if v is None else to_blob(orjson.loads(v)) for new, v in zip(news, row[1:], strict=True)}
        for row in rows
    ]
    conn.execute(text(f"UPDATE {table} SET {sets} WHERE {key} = :{key}"), params)
    return rows[-1][0]


def vectors_to_binary(engine: Engine, stop_after: int | None = None) -> bool:
    """Version 2: JSON vector columns become float32 bytes. False when `stop_after` batches ran
    out first (tests use it to interrupt an upgrade); the next call carries on."""
    blob = "BYTEA" if engine.dialect.name == "postgresql" else "BLOB"
    batches = 0
    for table, (key, pairs) in BINARY_COLUMNS.items():
        present = _columns(engine, table)
        if not any(old in present for old, _, _ in pairs):
            continue  # made by this build, or already upgraded
        with engine.begin() as conn:
            for _, new, _ in pairs:
                if new not in present:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {new} {blob}"))
        last: object = None
        while True:
            if stop_after is not None and batches >= stop_after:
                return False
            with engine.begin() as conn:
                last = _convert_batch(conn, table, key, pairs, last)
            batches += 1
            if last is None:
                break
        with engine.begin() as conn:
            for old, new, nullable in pairs:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {old}"))
                if not nullable and engine.dialect.name == "postgresql":
                    conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {new} SET NOT NULL"))
        log.info("store: %s now holds float32 vectors", table)
    return True


OLD = "_v2"  # suffix of the version-2 tables while version 3 moves their rows
# the version-2 indexes of `samples`, dropped when it is renamed aside (their names are the new ones')
_OLD_INDEXES = ("ix_samples_at", "ix_samples_request_id", "ix_samples_quarantined")
_MOVED_COLUMNS = [*SAMPLE_COLUMNS, ("label", "int4"), ("labelled_at", "float8")]


def _set_aside(conn: Connection) -> None:
    """Renames the version-2 tables aside and creates the version-3 ones, in one transaction."""
    postgres = conn.dialect.name == "postgresql"
    for index in _OLD_INDEXES:
        conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
    for table in (SAMPLES, OUTPUTS):
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {table}{OLD}"))
        if postgres:  # index names are per schema: free the primary keys' names for the new tables
            conn.execute(text(f"ALTER INDEX {table}_pkey RENAME TO {table}{OLD}_pkey"))
    SQLModel.metadata.create_all(conn, tables=[Sample.__table__, TeacherOutput.__table__])  # type: ignore[list-item]


def _move_batch(conn: Connection) -> bool:
    """Moves the BATCH oldest-keyed rows left in the old tables, with their teacher answers,
    into the new tables; False when none was left. Answers of samples that no longer exist go."""
    names = ", ".join(name for name, _ in _MOVED_COLUMNS)
    rows = conn.execute(text(f"SELECT id, {names} FROM {SAMPLES}{OLD} ORDER BY id LIMIT {BATCH}")).all()
    if not rows:
        return False
    last = rows[-1][0]
    place = {row[0]: j for j, row in enumerate(rows)}
    answers = conn.execute(
        text(
            f"SELECT sample_id, teacher, version, probs, quarantined FROM {OUTPUTS}{OLD} "
            "WHERE sample_id <= :last ORDER BY id"
        ),
        {"last": last},
    ).all()
    outputs: dict[tuple[int, str], tuple[object, ...]] = {}
    for sample_id, teacher, version, probs, quarantined in answers:
        j = place.get(sample_id)
        if j is not None:  # one answer per teacher and row: the first one written
            outputs.setdefault((j, teacher), (j, teacher, version, probs, bool(quarantined)))
    samples = [(*row[1:-3], bool(row[-3]), *row[-2:]) for row in rows]
    insert_rows(conn, _MOVED_COLUMNS, samples, list(outputs.values()))
    conn.execute(text(f"DELETE FROM {OUTPUTS}{OLD} WHERE sample_id <= :last"), {"last": last})
    conn.execute(text(f"DELETE FROM {SAMPLES}{OLD} WHERE id <= :last"), {"last": last})
    return True


def integer_keys(engine: Engine, stop_after: int | None = None) -> bool:
    """Version 3: sampled rows keyed by store-assigned integers. False when `stop_after`
    batches ran out first (tests use it to interrupt an upgrade); the next call carries on."""
    tables = set(inspect(engine).get_table_names())
    if f"{SAMPLES}{OLD}" not in tables:
        if SAMPLES not in tables or _is_integer_keyed(engine):
            return True  # made by this build
        with engine.begin() as conn:
            _set_aside(conn)
    batches = 0
    while True:
        if stop_after is not None and batches >= stop_after:
            return False
        with engine.begin() as conn:
            moved = _move_batch(conn)
        batches += 1
        if not moved:
            break
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {OUTPUTS}{OLD}"))
        conn.execute(text(f"DROP TABLE {SAMPLES}{OLD}"))
    log.info("store: sampled rows now keyed by integers")
    return True


def _is_integer_keyed(engine: Engine) -> bool:
    column = next(c for c in inspect(engine).get_columns(SAMPLES) if c["name"] == "id")
    return column["type"].python_type is int


# version -> the upgrade from the version before it
MIGRATIONS: dict[int, Callable[[Engine], bool]] = {2: vectors_to_binary, 3: integer_keys}
