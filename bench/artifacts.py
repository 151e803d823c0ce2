"""Size of a run's Evidently drift page on disk, written (`drift.html`) and stored (`drift.html.gz`).

Each case writes the page the way a run's gates child does (`monitor.drift.evidently_report`,
the config's default drift method), on a reference snapshot and a hold-out of the given sizes
with a shift in a quarter of the columns, then compresses it with `jobs.artifacts`. Prints the
bytes before and after, the ratio, and the CPU time of compressing and of reading it back.

    .venv/bin/python bench/artifacts.py            # three cases
    .venv/bin/python bench/artifacts.py --quick    # the smallest case only
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DO_NOT_TRACK", "1")

from common import command_line, record

from distill_watchdog.config import MonitorConfig
from distill_watchdog.loop.artifacts import compress_drift_page
from distill_watchdog.loop.monitor.drift import Comparison, evidently_report

CASES = [  # (features, reference rows, hold-out rows, classes)
    (40, 2_000, 1_000, 10),  # the demo's scale
    (64, 10_000, 2_000, 10),
    (64, 10_000, 10_000, 10),  # a full reference snapshot and a 10k-row hold-out
]


def case(features: int, ref_rows: int, cur_rows: int, classes: int, folder: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(ref_rows, features)).astype(np.float32)
    cur = rng.normal(size=(cur_rows, features)).astype(np.float32)
    cur[:, : features // 4] += 0.5
    cfg = MonitorConfig()
    compared = Comparison(
        ref, rng.integers(0, classes, ref_rows), cur, rng.integers(0, classes, cur_rows),
        cfg.drift_method, cfg.drift_threshold,
    )  # fmt: skip
    evidently_report(compared, folder / "drift.html")
    raw = (folder / "drift.html").stat().st_size
    cpu = time.process_time()
    packed = compress_drift_page(folder)
    compress_s = time.process_time() - cpu
    assert packed is not None and packed.suffix == ".gz"
    cpu = time.process_time()
    with gzip.open(packed, "rb") as fh:
        restored = len(fh.read())
    read_s = time.process_time() - cpu
    assert restored == raw
    return {"raw": raw, "gz": packed.stat().st_size, "compress_s": compress_s, "read_s": read_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the smallest case only")
    args = parser.parse_args()
    rows, data = [], []
    for features, ref_rows, cur_rows, classes in CASES[:1] if args.quick else CASES:
        with tempfile.TemporaryDirectory() as tmp:
            got = case(features, ref_rows, cur_rows, classes, Path(tmp))
        data.append({"features": features, "reference_rows": ref_rows, "holdout_rows": cur_rows, **got})
        cells = [
            f"{features}", f"{ref_rows:,}", f"{cur_rows:,}", f"{got['raw'] / 1e6:.2f} MB",
            f"{got['gz'] / 1e6:.2f} MB", f"{got['raw'] / got['gz']:.1f}×",
            f"{got['compress_s'] * 1000:.0f} ms", f"{got['read_s'] * 1000:.0f} ms",
        ]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| features | reference rows | hold-out rows | drift.html | drift.html.gz | smaller by "
            "| compress (CPU) | read back (CPU) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    load = os.getloadavg()
    notes = (
        f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine). The page "
        "grows with the feature count (a distribution plot per column), hardly with the rows; the UI "
        "sends the `.gz` as it is (`Content-Encoding: gzip`). Rejected, failed and declined runs lose "
        "their folder (page, job data, logs) after `monitor.run_retention_s`."
    )
    record("artifacts", "Run artifacts: the Evidently drift page", command_line(), table, notes, data)
    print(table)
    print(notes)


if __name__ == "__main__":
    main()
