"""Cost of the dashboard's curves: a store holding a week of monitor cycles, one page per range.

Fills a SQLite store (or `--store-url`) with `--days` of cycles at `--interval` seconds, each
summary with `--slices` slices and drift per slice over `--features` columns (the shape the
monitor stores), plus a few runs and activations; then builds the curves of each range as the
dashboard does (store reads, parsing, SVG) and reports CPU time, wall time, cycles read and the
size of the SVG. The work is bounded by `charts.MAX_CYCLES` and `charts.MAX_POINTS`, so the 7-day
page should cost about what the 24-hour one does.

    .venv/bin/python bench/dashboard.py                 # 7 days at 60 s, 20 slices
    .venv/bin/python bench/dashboard.py --days 1 --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, record

from distill_watchdog.config import PolicyConfig
from distill_watchdog.store import Store
from distill_watchdog.store.tables import DistillRun, MonitorCycle
from distill_watchdog.ui import charts


def summary(rng: np.random.Generator, slices: list[str], features: int) -> dict:
    def block() -> dict:
        ece = float(rng.uniform(0, 0.2))
        return {"n": int(rng.integers(100, 2000)), "agreement": float(rng.uniform(0.8, 1.0)),
                "kl": 0.1, "estimated_accuracy": 0.9, "teacher": {"ece": ece}}  # fmt: skip

    def drift() -> dict:
        top = [{"column": f"f{i}", "score": float(rng.uniform())} for i in range(5)]
        return {"method": "psi", "threshold": 0.1, "columns": features, "drifted_columns": 3,
                "share": float(rng.uniform(0, 0.6)), "top_columns": top, "rows": 500}  # fmt: skip

    table = {s: block() for s in ["all", *slices]}
    return {"outcome": "ok", "rows": 5000, "slices": table, "overall": table["all"],
            "weak_slices": [], "drift": {s: drift() for s in table}}  # fmt: skip


def fill(store: Store, days: float, interval: float, slices: int, features: int, now: float) -> int:
    rng = np.random.default_rng(0)
    labels = [f"sensor={i}" for i in range(slices)]
    n = int(days * 86400 / interval)
    texts = [orjson.dumps(summary(rng, labels, features)).decode() for _ in range(50)]
    rows = [
        MonitorCycle(at=now - (n - i) * interval, student_version="v1", rows=5000, summary_json=texts[i % 50])
        for i in range(n)
    ]
    store.db.retry("bench_fill", lambda s: s.add_all(rows))
    for i, status in enumerate(("promoted", "rejected", "declined", "promoted")):
        at = now - (i + 1) * days * 86400 / 5
        store.add_run(DistillRun(id=f"run{i}", created_at=at, updated_at=at + 600, status=status))
    store.record_activation("0123456789abcdef", "activate", "bench")
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between cycles")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--store-url", default=None)
    parser.add_argument("--quick", action="store_true", help="one repetition per range")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.store_url or f"sqlite:///{tmp}/bench.db")
        now = time.time()
        n = fill(store, args.days, args.interval, args.slices, args.features, now)
        policy, rows, data = PolicyConfig(), [], []
        for key, span in charts.RANGES.items():
            best_cpu = best_wall = float("inf")
            for _ in range(1 if args.quick else 3):
                cpu, wall = time.process_time(), time.perf_counter()
                cycles = store.cycles_between(now - span, max_rows=charts.MAX_CYCLES)
                runs = store.runs_between(now - span)
                page = charts.dashboard_charts(cycles, runs, store.activation_history(), policy, 20, key, now)
                best_cpu = min(best_cpu, time.process_time() - cpu)
                best_wall = min(best_wall, time.perf_counter() - wall)
            svg = sum(len(c) for r in page["rows"] for c in r["charts"])
            in_range = min(n, int(span / args.interval))
            count = 3 * len(page["rows"])
            data.append({"range": key, "cycles_in_range": in_range, "cycles_read": len(cycles),
                         "cpu_s": best_cpu, "wall_s": best_wall, "svg_bytes": svg,
                         "charts": count})  # fmt: skip
            cells = [key, f"{in_range:,}", str(len(cycles)), str(count), f"{best_cpu * 1000:.0f} ms",
                     f"{best_wall * 1000:.0f} ms", f"{svg / 1000:.0f} kB"]  # fmt: skip
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| range | cycles stored in it | cycles read | charts | CPU time | wall time | SVG |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]  # fmt: skip
    )
    load = os.getloadavg()
    notes = (
        f"{args.days:g} days of cycles every {args.interval:g} s, {args.slices} slices, "
        f"{args.features} features; best of {1 if args.quick else 3}. Load average at the end: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)."
    )
    record("dashboard", "Dashboard curves: cost per page", command_line(), table, notes, data)
    print(table)
    print(notes)


if __name__ == "__main__":
    main()
