"""Bulk writes of sampled rows and their teacher answers, with the integer keys the store assigns.

Shared by the sampling writer (`SampleStore.add_sample_batches`) and the schema upgrade that
rewrites old rows (`migrate.py`), which must not import the rest of the store.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

Columns = list[tuple[str, str]]  # (column, PostgreSQL type for binary COPY)

SAMPLES = "samples"
OUTPUTS = "teacher_outputs"
# What the sampling writer stores per row; the upgrade adds the label columns.
SAMPLE_COLUMNS: Columns = [
    ("request_id", "text"), ("at", "float8"), ("features", "bytea"), ("student_probs", "bytea"),
    ("student_version", "text"), ("slice_json", "text"), ("quarantined", "bool"),
]  # fmt: skip
OUTPUT_COLUMNS: Columns = [
    ("sample_id", "int8"), ("teacher", "text"), ("version", "text"), ("probs", "bytea"),
    ("quarantined", "bool"),
]  # fmt: skip


def _copy(cursor: Any, table: str, columns: Columns, rows: list[tuple[Any, ...]]) -> None:
    """One binary COPY of `rows` into `table` (psycopg 3), inside the caller's transaction."""
    if not rows:
        return
    names = ", ".join(column for column, _ in columns)
    with cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([kind for _, kind in columns])
        for row in rows:
            copy.write_row(row)


def _executemany(connection: Connection, table: str, columns: Columns, rows: list[tuple[Any, ...]]) -> None:
    """Through the driver itself: SQLAlchemy's `insert()` with a record per row cost twice the CPU."""
    if not rows:
        return
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    names = ", ".join(name for name, _ in columns)
    marks = ", ".join([mark] * len(columns))
    connection.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)


def insert_rows(
    connection: Connection,
    columns: Columns,
    samples: list[tuple[Any, ...]],
    outputs: list[tuple[Any, ...]],
    copy: bool = True,
) -> list[int]:
    """Inserts `samples` (values of `columns`) and `outputs` (`OUTPUT_COLUMNS`, with the index of
    their row in `samples` in place of `sample_id`) in the caller's transaction; returns the
    rows' new keys.

    PostgreSQL: the keys are drawn from the table's sequence first (one query), then both tables
    are written by binary COPY (`copy`) or executemany. SQLite: the rows are inserted without
    keys and take consecutive rowids after the largest one (SQLite's rule while the largest is
    below 2^63 - 1; the transaction holds the write lock, so no other writer interleaves), read
    back with `last_insert_rowid()`.
    """
    if not samples:
        return []
    n = len(samples)
    if connection.dialect.name == "postgresql":
        found = connection.exec_driver_sql(
            f"SELECT nextval(pg_get_serial_sequence('{SAMPLES}', 'id')) FROM generate_series(1, %s)", (n,)
        )
        ids = [int(r[0]) for r in found]
        keyed = [(i, *row) for i, row in zip(ids, samples, strict=True)]
        answers = [(ids[j], *rest) for j, *rest in outputs]
        sample_columns = [("id", "int8"), *columns]
        if copy:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            _copy(cursor, SAMPLES, sample_columns, keyed)
            _copy(cursor, OUTPUTS, OUTPUT_COLUMNS, answers)
        else:
            _executemany(connection, SAMPLES, sample_columns, keyed)
            _executemany(connection, OUTPUTS, OUTPUT_COLUMNS, answers)
        return ids
    _executemany(connection, SAMPLES, columns, samples)
    last = int(connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
    ids = list(range(last - n + 1, last + 1))
    _executemany(connection, OUTPUTS, OUTPUT_COLUMNS, [(ids[j], *rest) for j, *rest in outputs])
    return ids
