"""Production volume (issue 31): store size, insert rate, monitor cycle and retention as rows grow.

Per backend (SQLite, and PostgreSQL when a URL is given), one fresh store filled with sampled
rows of 64 features and 10 classes (one teacher answer each) through the daemon's own writer
(`Store.add_sample_batches`, 2,048 rows per transaction, what a teacher process flushes):

1. the first rows are written while a daemon serves `/v1/predict` from the same store under wrk
   (serving on); the rest with no daemon;
2. on PostgreSQL, binary COPY and executemany alternate, 10k rows at a time, same run;
   then the store is filled to each size with the default (COPY);
3. at each size: bytes per row on disk (every table and index of the store), a monitor cycle
   (the daemon's own `run_cycle`, in a fresh process, the second cycle: the first one imports
   Evidently, as the daemon's long-lived child does once) at window 100k and 1M with its peak RSS;
4. at the largest size: retention deleting every row (`Store.delete_before`).

Also: the same vectors as JSON text (the version-1 format), bytes per row, for the ratio; and
1 vs 2 uvicorn workers (`server.workers`) serving `/v1/predict` under wrk.

    .venv/bin/python bench/volume.py [--sizes 100000,1000000] [--postgres URL] [--seconds 15]

`--postgres` defaults to $WATCHDOG_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VENV_BIN, Child, command_line, free_port, record, warm, wrk

from distill_watchdog.store import SampleBatch, Store, TeacherColumn
from distill_watchdog.store import samples as sample_sql

from support import Postgres, write_model

WIDTH, CLASSES = 64, 10
RAW = (WIDTH + 2 * CLASSES) * 4  # float32 features + student and teacher probabilities
PER_CALL, BATCH = 2048, 256
TOKEN = "bench-admin-token-0001"
SERVING_ROWS = 40_960  # written with serving on; on PostgreSQL as many again, COPY and executemany by turns


class Rows:
    """Sampled rows in time order (0.05 s apart, ending before now), as the sampler hands them over."""

    def __init__(self, version: str, seed: int = 0) -> None:
        self.rng, self.version, self.next = np.random.default_rng(seed), version, 0
        self.start = time.time() - 3 * 86400

    def call(self) -> list[SampleBatch]:
        out = []
        for _ in range(PER_CALL // BATCH):
            k = np.arange(self.next, self.next + BATCH)
            self.next += BATCH
            x = self.rng.normal(size=(BATCH, WIDTH)).astype(np.float32)
            out.append(
                SampleBatch(
                    request_ids=[f"{i:024x}" for i in k],
                    at=(self.start + 0.05 * k).tolist(),
                    features=x,
                    student_probs=self.rng.dirichlet(np.ones(CLASSES), BATCH).astype(np.float32),
                    student_versions=[self.version] * BATCH,
                    slices=[{"sensor": "abc"[i % 3], "site": "nm"[i % 2]} for i in k],
                    teachers={
                        "big": TeacherColumn(
                            list(range(BATCH)),
                            "v1",
                            self.rng.dirichlet(np.ones(CLASSES), BATCH).astype(np.float32),
                        )
                    },
                )
            )
        return out


def fill(store: Store, rows: Rows, until: int, stop: threading.Event | None = None) -> dict[str, float]:
    """Writes rows until `until` are stored (or `stop` is set); rows/s of the writes alone."""
    written, busy = 0, 0.0
    began = time.perf_counter()
    while rows.next < until and not (stop is not None and stop.is_set()):
        batches = rows.call()
        t = time.perf_counter()
        written += store.add_sample_batches(batches)
        busy += time.perf_counter() - t
    wall = time.perf_counter() - began
    return {"rows": written, "rows_per_s": written / wall if wall else 0.0, "write_s": busy}


def disk_bytes(store: Store, url: str) -> int:
    import sqlalchemy as sa

    with store.db.engine.connect() as conn:
        if store.is_postgres:
            conn.execute(sa.text("CHECKPOINT"))
            return int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar() or 0)
        conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
    path = Path(url.split("///", 1)[1])
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def empty_size(url: str) -> int:
    """The store's size with its tables created and no rows (subtracted: a fixed cost)."""
    store = Store(url)
    try:
        return disk_bytes(store, url)
    finally:
        store.close()


def json_bytes(rows: Rows) -> float:
    """Bytes per row of the same vectors as JSON text (version 1), on rows like the bench's."""
    probe = Rows(rows.version, seed=5).call()[0]
    dump = sample_sql.dumps
    total = sum(
        len(dump(probe.features[i]))
        + len(dump(probe.student_probs[i]))
        + len(dump(probe.teachers["big"].probs[i]))
        for i in range(BATCH)
    )
    return total / BATCH


CYCLE = """
import json, sys, time
from distill_watchdog.config import load_settings
from distill_watchdog.loop.monitor.cycle import run_cycle
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store
cfg = json.loads(sys.argv[1])
settings = load_settings(None, **cfg)
store = Store(settings.store_url)
registry = Registry(store, settings.models_dir, ort_threads=1)
from distill_watchdog.loop.monitor import drift  # imports done before the cycle, as in the daemon's child
run_cycle(settings, store, registry)  # the first cycle imports Evidently; the daemon's child is warm
cpu = time.process_time()
out = run_cycle(settings, store, registry)
out["cpu_seconds"] = time.process_time() - cpu
keys = ("seconds", "cpu_seconds", "peak_rss_bytes", "window_bytes", "rows", "outcome")
print(json.dumps({k: out.get(k) for k in keys}))
"""


def cycle(work: Path, url: str, model: Path, window: int) -> dict[str, Any]:
    cfg = {
        "data_dir": str(work / "data"),
        "store": {"url": url},
        "teachers": [{"name": "big", "kind": "onnx", "location": str(model)}],
        "monitor": {"window": window, "min_rows": 100, "reference": str(work / "reference.npz")},
    }
    env = {**os.environ, "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-c", CYCLE, json.dumps(cfg)], capture_output=True, text=True, env=env, check=True
    )
    return {
        **json.loads(out.stdout.strip().splitlines()[-1]),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def daemon_config(work: Path, url: str, model: Path, card: Path, port: int, workers: int) -> Path:
    config = {
        "data_dir": str(work / "data"),
        "store": {"url": url},
        "server": {"port": port, "admin_token": TOKEN, "log_format": "json", "workers": workers},
        "student": {"model": str(model), "card": str(card)},
        "monitor": {"interval_s": 86400.0},
        "policy": {"max_runs_per_day": 0},
    }
    path = work / f"watchdog-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def body() -> bytes:
    return json.dumps({"inputs": np.random.default_rng(0).normal(size=(1, WIDTH)).round(4).tolist()}).encode()


def serving_on(work: Path, url: str, model: Path, card: Path, rows: Rows, seconds: int) -> dict[str, Any]:
    """Rows written while a daemon on the same store answers wrk; wrk's req/s alongside."""
    port = free_port()
    argv = [
        str(VENV_BIN / "distill-watchdog"),
        "serve",
        "--config",
        str(daemon_config(work, url, model, card, port, 1)),
    ]
    with Child(argv, port, ready="/v2/health/ready") as child:
        warm(f"{child.url}/v1/predict", body())
        stop = threading.Event()
        result: dict[str, Any] = {}
        cap = rows.next + SERVING_ROWS  # the rest of the run measures the sizes, not this phase
        writer = threading.Thread(target=lambda: result.update(fill(Store(url), rows, cap, stop)))
        writer.start()
        load = wrk(f"{child.url}/v1/predict", body(), connections=4, seconds=seconds, workdir=work)
        stop.set()
        writer.join()
    return {**result, "req_per_s": load.rps, "p99_ms": load.p99_ms}


def active_version(work: Path, url: str, model: Path, card: Path) -> str:
    from distill_watchdog.registry import Registry

    registry = Registry(Store(url), work / "data" / "models")
    info = registry.register_files(model, card)
    registry.record_activation(info.version, actor="bench")
    return info.version


def copy_vs_executemany(store: Store, rows: Rows, until: int) -> dict[str, float]:
    """PostgreSQL: the two insert paths alternating, 10k rows each, until `until` rows."""
    totals = {"copy": [0, 0.0], "executemany": [0, 0.0]}
    mode = "copy"
    try:
        while rows.next < until:
            sample_sql.PG_INSERT = mode
            got = fill(store, rows, min(until, rows.next + 10_240))
            totals[mode][0] += got["rows"]
            totals[mode][1] += got["write_s"]
            mode = "executemany" if mode == "copy" else "copy"
    finally:
        sample_sql.PG_INSERT = "copy"
    return {k: n / s for k, (n, s) in totals.items() if s}


def backend(name: str, url: str, work: Path, sizes: list[int], seconds: int) -> dict[str, Any]:
    model, card = write_model(work / "src", num_features=WIDTH, num_classes=CLASSES)
    np.savez(
        work / "reference.npz", x=np.random.default_rng(9).normal(size=(20_000, WIDTH)).astype(np.float32)
    )
    base = empty_size(url)
    version = active_version(work, url, model, card)
    rows = Rows(version)
    store = Store(url)
    out: dict[str, Any] = {"backend": name, "sizes": {}}
    out["serving_on"] = serving_on(work, url, model, card, rows, seconds)
    print(name, "serving on", out["serving_on"], flush=True)
    if store.is_postgres:
        out["pg_insert"] = copy_vs_executemany(store, rows, rows.next + SERVING_ROWS)
        print(name, "pg insert", out["pg_insert"], flush=True)
    for size in sizes:
        written = fill(store, rows, size)
        n = store.count_samples()
        stats: dict[str, Any] = {"fill": written, "rows": n}
        stats["bytes_per_row"] = (disk_bytes(store, url) - base) / n
        for window in sorted({min(100_000, size), min(1_000_000, size)}):
            stats[f"cycle_{window}"] = cycle(work, url, model, window)
        if size >= 1_000_000:  # the first read after a bulk fill also sets PostgreSQL's hint bits
            stats["cycle_1000000_again"] = cycle(work, url, model, 1_000_000)
        out["sizes"][size] = stats
        print(name, size, stats, flush=True)
    began = time.perf_counter()
    deleted = store.delete_before(time.time())
    seconds_taken = time.perf_counter() - began
    out["retention"] = {"rows": deleted["samples"], "seconds": seconds_taken}
    print(name, "retention", out["retention"], flush=True)
    store.close()
    return out


def workers_throughput(work: Path, seconds: int) -> dict[int, float]:
    """req/s of /v1/predict with server.workers 1 and 2 (no sampling), same wrk, same run."""
    model, card = write_model(work / "src", num_features=WIDTH, num_classes=CLASSES)
    out: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(2):
        for workers in (1, 2):
            port = free_port()
            url = f"sqlite:///{work / f'w{workers}.db'}"
            config = daemon_config(work, url, model, card, port, workers)
            argv = [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)]
            with Child(argv, port, ready="/v2/health/ready") as child:
                warm(f"{child.url}/v1/predict", body())
                out[workers].append(
                    wrk(f"{child.url}/v1/predict", body(), connections=8, seconds=seconds).rps
                )
    return {k: float(np.median(v)) for k, v in out.items()}


def _cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    cpu = f" ({c['cpu_seconds']:.1f})" if "cpu_seconds" in c else ""
    return f"{c['seconds']:.1f}{cpu} / {c['peak_rss_bytes'] / 2**20:.0f}"


def table(results: list[dict[str, Any]], raw_json: float, workers: dict[int, float]) -> str:
    lines = [
        "| backend | rows | bytes/row on disk (x raw float32) | insert rows/s (fill to this size) | "
        "cycle s (CPU s) / peak RSS MiB at window 100k | at window 1M | at window 1M, next cycle |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for size, s in r["sizes"].items():
            c1 = s.get("cycle_100000") or s.get(f"cycle_{min(100_000, int(size))}")
            cm = s.get("cycle_1000000")
            per_row = s["bytes_per_row"]
            lines.append(
                f"| {r['backend']} | {s['rows']:,} | {per_row:.0f} ({per_row / RAW:.2f}x) | "
                f"{s['fill']['rows_per_s']:,.0f} | {_cell(c1)} | {_cell(cm)} | "
                f"{_cell(s.get('cycle_1000000_again'))} |"
            )
    lines += [
        "",
        "| backend | rows/s with serving on (wrk req/s, p99 ms) | PostgreSQL COPY / executemany rows/s "
        "| retention: rows deleted, s, rows/s |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        on, pg, ret = r["serving_on"], r.get("pg_insert"), r["retention"]
        pg_cell = f"{pg['copy']:,.0f} / {pg['executemany']:,.0f}" if pg else "-"
        lines.append(
            f"| {r['backend']} | {on['rows_per_s']:,.0f} "
            f"({on['req_per_s']:,.0f} req/s, {on['p99_ms']:.2f}) | "
            f"{pg_cell} | {ret['rows']:,}, {ret['seconds']:.1f}, {ret['rows'] / ret['seconds']:,.0f} |"
        )
    loads = [
        f"{r['backend']} {int(size):,} rows window {key.removeprefix('cycle_')}: "
        f"{c['load_before']:.1f}/{c['load_after']:.1f}"
        for r in results
        for size, s in r["sizes"].items()
        for key, c in s.items()
        if key.startswith("cycle_") and "load_before" in c
    ]
    if loads:
        lines += ["", "Load average (1 min) before/after each cycle: " + "; ".join(loads) + "."]
    lines += [
        "",
        f"Raw float32 per row: {RAW} bytes (64 features, 10 + 10 probabilities). The same vectors as JSON "
        f"text (schema version 1): {raw_json:.0f} bytes per row before any row or index overhead.",
    ]
    if workers:
        lines.append(
            f"`server.workers` 1 vs 2, /v1/predict under wrk -c8 (median of 2): "
            f"{workers[1]:,.0f} vs {workers[2]:,.0f} req/s."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--postgres", default=os.environ.get("WATCHDOG_TEST_POSTGRES_URL"))
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="volume-"))
    results = []
    try:
        if not args.skip_sqlite:
            sqlite = f"sqlite:///{work / 'sqlite' / 'watchdog.db'}"
            results.append(backend("SQLite", sqlite, work / "sqlite", sizes, args.seconds))
        if args.postgres:
            pg = Postgres()
            url = pg.create_database()
            try:
                results.append(backend("PostgreSQL", url, work / "pg", sizes, args.seconds))
            finally:
                pg.drop_database(url)
                pg.close()
        workers = {} if args.skip_workers else workers_throughput(work / "workers", args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw_json = json_bytes(Rows("v"))
    text = table(results, raw_json, workers)
    print(text)
    notes = (
        "2 CPUs shared with other sessions' builds and tests (load varies): figures are single runs; "
        "ratios within a run are the comparable part. Cycle: `run_cycle` in a fresh process (imports "
        "excluded from its seconds, included in its peak RSS), drift on `monitor.drift_sample` rows."
    )
    if not args.no_record:
        data = {"results": results, "json_bytes_per_row": raw_json, "workers": workers}
        record("volume", "Volume: sampled rows at 100k-5M", command_line(), text, notes, data)


if __name__ == "__main__":
    main()
