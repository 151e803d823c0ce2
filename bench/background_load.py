"""A stand-in for background work, for control runs: JSON and SQLite work for a share of the time.

Sampling's background work (teacher calls, sample inserts) runs in the daemon's teacher
processes on the background CPU, beside the load generator on a 2-CPU machine. A control run
puts this process there instead, with sampling off, for the same share of CPU time, so that a
benchmark can tell what sampling costs from what any background work of that size costs on the
machine. The caller sets its CPU and priority (`taskset`, `chrt -i 0`).

    python bench/background_load.py --share 0.06 --db /tmp/load.db
"""

from __future__ import annotations

import argparse
import sqlite3
import time

import numpy as np
import orjson

PERIOD_S = 0.1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--share", type=float, required=True, help="CPU time per 100 ms of wall time (0..1)")
    parser.add_argument("--db", required=True, help="SQLite file to insert into (WAL, synchronous=NORMAL)")
    args = parser.parse_args()
    db = sqlite3.connect(args.db)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS rows (features TEXT, probs TEXT)")
    x = np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32)
    probs = np.full((16, 10), 0.1, dtype=np.float32)
    inserted = 0
    while True:
        start, cpu_start = time.perf_counter(), time.process_time()
        # CPU time, not wall time: preempted by the load generator, it still does its share of work
        # (within the period: a CPU too busy for that gets no more than the period).
        while (
            time.process_time() - cpu_start < args.share * PERIOD_S and time.perf_counter() - start < PERIOD_S
        ):
            # What a teacher call and a bulk insert do per batch: encode, decode, insert, commit.
            decoded = orjson.loads(orjson.dumps({"data": x.ravel()}, option=orjson.OPT_SERIALIZE_NUMPY))
            rows = np.asarray(decoded["data"], dtype=np.float32).reshape(x.shape)
            encoded = [orjson.dumps(r.tolist()).decode() for r in rows]
            db.executemany(
                "INSERT INTO rows VALUES (?, ?)",
                [(e, orjson.dumps(p.tolist()).decode()) for e, p in zip(encoded, probs, strict=True)],
            )
            db.commit()
            inserted += len(rows)
        if inserted > 20_000:  # keeps the file small
            db.execute("DELETE FROM rows")
            db.commit()
            inserted = 0
        time.sleep(max(0.0, PERIOD_S - (time.perf_counter() - start)))


if __name__ == "__main__":
    main()
