"""How long the shadow sampler holds the serving event loop per step, now vs the earlier way.

Every step of the sampler that runs on the event loop delays the requests in flight at that
moment, so the longest step matters for p99, not only the total. Same run, same rows, in this
process: each row is a one-row request's own arrays (separate allocations, as the request
path has them). Medians over many 256-row batches (`sampling.batch_size`):

- gather: the batch's feature and probability arrays. Earlier: `np.stack` of per-row views
  at batch time. Now: the rows' bytes appended to two buffers when a worker admits the
  requests `offer` kept (`RequestSampler.admit`, 64 requests per event-loop step), and one
  conversion of each buffer's front at batch time.
- per sampled request, on the request path: earlier (until 2026-12-05) each row's bytes were
  appended there (`WaitingRows.add`); now the request is kept in a list as it is.
- slice labels: earlier a call per row; now `SliceRules.batch_slices`.
- store pickling: earlier one pickle of everything answered since the last flush (five
  batches at 2,500 sampled rows/s and `flush_s: 0.5`); now one batch per event-loop step.

    .venv/bin/python bench/sampler_steps.py [--batches 200] [--no-append]
"""

from __future__ import annotations

import argparse
import pickle
import time
from dataclasses import dataclass

import numpy as np
from common import command_line, record

from distill_watchdog.config import BinRule, SamplingConfig, SlicesConfig, load_settings
from distill_watchdog.shadow import RequestSampler
from distill_watchdog.shadow.offer import ADMIT_CHUNK
from distill_watchdog.shadow.slices import SliceRules
from distill_watchdog.shadow.waiting import WaitingRows
from distill_watchdog.store import SampleBatch, TeacherColumn

BATCH = 256
FLUSH_BATCHES = 5
WIDTH, CLASSES = 40, 10
EARLIER_GATHER = "gather at batch time, earlier (np.stack)"
NOW_GATHER = "gather at batch time, now (byte buffers to arrays)"
PER_ROW = "per sampled row, on its request, earlier: bytes appended (WaitingRows.add)"
PER_REQUEST = "per sampled request, on its request, now: the request kept (list append)"
ADMIT = f"admission of {ADMIT_CHUNK} offered requests, now (one step)"


def requests(n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """n one-row requests' (features, probabilities), each allocated apart like the request path's."""
    out, clutter = [], []
    for _ in range(n):
        x = np.array([rng.normal(size=WIDTH).round(4).tolist()])  # parsed JSON: float64 [1, D]
        clutter.append(bytearray(512))  # other requests' buffers between them
        probs = rng.random((12, CLASSES), dtype=np.float32)[3:4]  # a slice of a micro-batch's output
        out.append((x, probs))
    return out


@dataclass
class Request:
    """What `offer` keeps of a request (validation.PredictInput's fields)."""

    x: np.ndarray
    slice: dict[str, str] | None
    ids: list[str]


def earlier_row_slices(rules: SliceRules, row: np.ndarray, given: dict[str, str] | None) -> dict[str, str]:
    """The per-row labelling the sampler used before `batch_slices` (the baseline)."""
    out = rules.request_slices(given)
    for b in rules.bins:
        if b.column < row.shape[0]:
            out[b.name] = b.labels[int(np.searchsorted(b.edges, row[b.column], side="right"))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sampling = SamplingConfig(rate=0.1)
    plain = SliceRules(SlicesConfig(), sampling)
    binned = SliceRules(SlicesConfig(bins=[BinRule(name="x0", feature=0, edges=[-1.0, 0.0, 1.0])]), sampling)
    given: list[dict[str, str] | None] = [None if i % 3 else {"sensor": "a"} for i in range(BATCH)]
    times: dict[str, list[float]] = {}
    ids = [f"{k:024x}" for k in range(BATCH)]

    settings = load_settings(None, sampling={"rate": 0.1, "queue_size": 10_000})
    service = RequestSampler(settings, WaitingRows(10_000))  # in the daemon, the shadow process
    service.running = True  # what start() sets

    def timed(name: str, start: float) -> None:
        times.setdefault(name, []).append((time.perf_counter() - start) * 1e6)

    for _ in range(args.batches):
        rows = requests(BATCH, rng)
        views = [(x[0], p[0]) for x, p in rows]  # earlier: per-row views queued, stacked per batch
        t = time.perf_counter()
        np.stack([v[0] for v in views]).astype(np.float32), np.stack([v[1] for v in views])
        timed(EARLIER_GATHER, t)
        waiting = WaitingRows(10_000)  # earlier: each sampled row's bytes appended on its request
        t = time.perf_counter()
        for k, (x, p) in enumerate(rows):
            waiting.add(x, p, ids[k], 0.0, "v1", given[k])
        times.setdefault(PER_ROW, []).append((time.perf_counter() - t) * 1e6 / BATCH)
        offered = service._offered  # now: `offer` keeps the request, admission hands its rows on
        kept = [(Request(x, given[k], [ids[k]]), p) for k, (x, p) in enumerate(rows)]
        t = time.perf_counter()
        for request, p in kept:
            offered.append((request, p, [0], "v1", time.time()))
        times.setdefault(PER_REQUEST, []).append((time.perf_counter() - t) * 1e6 / BATCH)
        while offered:
            t = time.perf_counter()
            service.admit(ADMIT_CHUNK)
            timed(ADMIT, t)
        t = time.perf_counter()
        batch = service.sink.take(BATCH)
        timed(NOW_GATHER, t)
        assert batch is not None
        for label, rules in (("no rules", plain), ("one bin rule", binned)):
            t = time.perf_counter()
            [earlier_row_slices(rules, batch.x[j], g) for j, g in enumerate(given)]
            timed(f"slice labels ({label}), earlier (per row)", t)
            t = time.perf_counter()
            rules.batch_slices(batch.x, given)
            timed(f"slice labels ({label}), now (batch_slices)", t)
        answered = SampleBatch(
            request_ids=batch.ids, at=batch.at, features=batch.x, student_probs=batch.probs,
            student_versions=batch.versions, slices=plain.batch_slices(batch.x, given),
            teachers={"big": TeacherColumn(list(range(BATCH)), "t1", batch.probs.copy())},
        )  # fmt: skip
        flush = [pickle.loads(pickle.dumps(answered)) for _ in range(FLUSH_BATCHES)]  # distinct objects
        t = time.perf_counter()
        pickle.dumps(flush, protocol=pickle.HIGHEST_PROTOCOL)
        timed(f"store pickling, earlier (one step, {FLUSH_BATCHES} batches)", t)
        t = time.perf_counter()
        pickle.dumps(answered, protocol=pickle.HIGHEST_PROTOCOL)
        timed("store pickling, now (longest step: one batch)", t)

    med = {name: float(np.median(v)) for name, v in times.items()}
    lines = ["| step on the event loop | median µs |", "|---|---|"]
    lines += [f"| {name} | {value:,.1f} |" for name, value in med.items()]
    earlier_step = (
        med["gather at batch time, earlier (np.stack)"] + med["slice labels (no rules), earlier (per row)"]
    )
    now_step = med[NOW_GATHER] + med["slice labels (no rules), now (batch_slices)"]
    lines += [
        "",
        "| the batch step (gather + labels, no rules) | µs | vs earlier |",
        "|---|---|---|",
        f"| earlier | {earlier_step:,.1f} | 1.00 |",
        f"| now | {now_step:,.1f} | {now_step / earlier_step:.2f} |",
        "",
        "| on each sampled request | µs |",
        "|---|---|",
        f"| earlier: its rows' bytes appended | {med[PER_ROW]:,.1f} |",
        f"| now: the request kept; its rows admitted later, {ADMIT_CHUNK} requests per step | "
        f"{med[PER_REQUEST]:,.1f} |",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        notes = (
            f"Medians over {args.batches} batches of {BATCH} one-row requests ({WIDTH} features, {CLASSES} "
            "classes), in one process; the earlier ways are reproduced in the script as the baseline. In the "
            "daemon under wrk load each step took 2 to 4 times longer than here (caches shared with "
            "serving), and the steps on the request path, which run one request in ten, 5 to 10 times longer "
            "(docs/sampling.md)."
        )
        record("sampler_steps", "Shadow sampler: event-loop time per step", command_line(), table, notes)


if __name__ == "__main__":
    main()
