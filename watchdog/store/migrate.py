"""Schema upgrades of existing stores, one function per version, each resumable.

Version 2 stores vectors as float32 bytes instead of JSON text. Rows are converted in
batches, each its own transaction, so a store of millions of rows is never locked for long and
an interrupted upgrade continues where it stopped (rows whose new column is still empty).
The old columns are dropped once every row is converted; only then is the version written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

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


# version -> the upgrade from the version before it
MIGRATIONS: dict[int, Callable[[Engine], bool]] = {2: vectors_to_binary}
