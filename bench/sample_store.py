"""What a bulk insert of sampled rows costs per row as the store grows: random vs time-ordered ids.

The sample id is the primary key of `samples` and is indexed in `teacher_outputs`. Same run,
same rows, a fresh store per case: the store is filled to each size with 2,048-row inserts
(what a teacher process writes per flush at 2,500 sampled rows/s is about that), then 20 more
inserts are measured. Earlier: random 32-hex-digit ids (what uuid4().hex gives), reproduced
here. Now: `store.samples._new_ids`, ids in creation order. Reported per row: CPU time of
this process, wall time, and bytes written — for SQLite every byte this process writes (WAL
and checkpoints), for PostgreSQL the WAL the server generated (`pg_current_wal_lsn`).

    .venv/bin/python bench/sample_store.py [--sizes 0,50000,200000] [--postgres URL] [--no-append]

`--postgres` defaults to $WATCHDOG_TEST_POSTGRES_URL; without either only SQLite is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from common import ROOT, command_line, record

from distill_watchdog.store import SampleBatch, Store, TeacherColumn
from distill_watchdog.store import samples as sample_sql

from support import Postgres

OUT = ROOT / "bench" / "out" / "sample_store"
BATCH, BATCHES_PER_INSERT, MEASURED = 256, 8, 20
WIDTH, CLASSES = 40, 10
REQUEST_IDS = itertools.count()
ORDERED_IDS = sample_sql._new_ids  # the ids the store makes now


def random_ids(n: int) -> list[str]:
    """The earlier ids: 128 random bits as 32 hex digits."""
    raw = os.urandom(16 * n).hex()
    return [raw[i : i + 32] for i in range(0, 32 * n, 32)]


def batches(rng: np.random.Generator) -> list[SampleBatch]:
    """One insert's rows; `renamed` gives each insert new request ids, rising as the daemon makes
    them (a prefix and a counter), so the request_id index grows at its end as it does in service."""
    out = []
    for _ in range(BATCHES_PER_INSERT):
        n = BATCH
        out.append(
            SampleBatch(
                request_ids=[f"{next(REQUEST_IDS):024x}" for _ in range(n)],
                at=[time.time()] * n,
                features=rng.normal(size=(n, WIDTH)).astype(np.float32),
                student_probs=rng.dirichlet(np.ones(CLASSES), n).astype(np.float32),
                student_versions=["student-v1"] * n,
                slices=[{"region": "eu"}] * n,
                teachers={"big": TeacherColumn(list(range(n)), "v1", rng.dirichlet(np.ones(CLASSES), n))},
            )
        )
    return out


def renamed(rows: list[SampleBatch]) -> list[SampleBatch]:
    """The same rows under new request ids."""
    return [
        dataclasses.replace(batch, request_ids=[f"{next(REQUEST_IDS):024x}" for _ in batch.request_ids])
        for batch in rows
    ]


class Written:
    """Bytes written per measurement: this process's writes (SQLite), or the server's WAL (PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url) if url.startswith("postgresql") else None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def now(self) -> int:
        if self.engine is None:
            for line in Path("/proc/self/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    return int(line.split()[1])
            return 0
        with self.engine.connect() as conn:
            lsn = conn.exec_driver_sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").scalar()
        return int(lsn)


def measure(url: str, size: int, new_ids: Callable[[int], list[str]]) -> tuple[float, float, float]:
    """(CPU µs, wall µs, bytes written) per row, once the store holds `size` rows."""
    original = sample_sql._new_ids
    sample_sql._new_ids = new_ids
    try:
        store = Store(url)
        rows = batches(np.random.default_rng(0))
        per_insert = BATCH * BATCHES_PER_INSERT
        for _ in range(size // per_insert):
            store.add_sample_batches(renamed(rows))
        inserts = [renamed(rows) for _ in range(MEASURED)]
        written = Written(url)
        b0, c0, t0 = written.now(), time.process_time(), time.perf_counter()
        for insert in inserts:
            store.add_sample_batches(insert)
        c1, t1, b1 = time.process_time(), time.perf_counter(), written.now()
        written.close()
        store.close()
    finally:
        sample_sql._new_ids = original
    n = MEASURED * per_insert
    return 1e6 * (c1 - c0) / n, 1e6 * (t1 - t0) / n, (b1 - b0) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,50000,200000", help="rows in the store before measuring")
    parser.add_argument("--postgres", default=os.environ.get("WATCHDOG_TEST_POSTGRES_URL", ""))
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    postgres = None
    if args.postgres:
        os.environ["WATCHDOG_TEST_POSTGRES_URL"] = args.postgres  # the server Postgres() hands out from
        postgres = Postgres()
    backends = ["sqlite"] + (["postgresql"] if postgres else [])
    lines = [
        "| store | rows before | ids | CPU µs/row | wall µs/row | KB written/row | CPU vs random |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in backends:
        for size in sizes:
            results = {}
            for label, new_ids in (("random (earlier)", random_ids), ("time-ordered (now)", ORDERED_IDS)):
                if postgres is None or backend == "sqlite":
                    url = f"sqlite:///{OUT / f'{size}-{label.split()[0]}.db'}"
                    results[label] = measure(url, size, new_ids)
                else:
                    url = postgres.create_database()
                    try:
                        results[label] = measure(url, size, new_ids)
                    finally:
                        postgres.drop_database(url)
                cpu, wall, written = results[label]
                ratio = cpu / results["random (earlier)"][0]
                lines.append(
                    f"| {backend} | {size:,} | {label} | {cpu:.1f} | {wall:.1f} | {written / 1024:.1f} "
                    f"| {ratio:.2f} |"
                )
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    notes = (
        f"Each case: a fresh store filled to the size with {BATCH * BATCHES_PER_INSERT}-row inserts "
        f"(`Store.add_sample_batches`, {BATCHES_PER_INSERT} batches of {BATCH} rows, {WIDTH} features, "
        f"{CLASSES} classes, one teacher), then {MEASURED} such inserts measured. KB written: SQLite, "
        "what this process wrote (`wchar`, WAL and checkpoints); PostgreSQL, WAL generated by the "
        "server. The earlier random ids are reproduced in this script."
    )
    print(table)
    print(notes)
    if not args.no_append:
        record(
            "sample_store", "Sample store: bulk insert cost per row by id order", command_line(), table, notes
        )


if __name__ == "__main__":
    main()
