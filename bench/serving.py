"""Serving throughput and latency: the daemon against a bare ASGI ceiling and a naive FastAPI server.

Same run, same uvicorn (uvloop + httptools, one worker), same wrk load, same machine, an MLP
with 40 inputs and 10 classes; concurrency 1 and 32. Each round runs each server in turn, alone;
every figure is the median over the rounds. Appends its table to docs/BENCHMARKS.md.

    .venv/bin/python bench/serving.py [--seconds 10] [--rounds 3] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics

import httpx
import numpy as np
from common import (
    LOAD_CPUS,
    ROOT,
    SERVER_CPUS,
    VENV_BIN,
    Child,
    Load,
    command_line,
    free_port,
    median_load,
    mlp_onnx_bytes,
    pinning_note,
    record,
    warm,
    wrk,
)

OUT = ROOT / "bench" / "out" / "serving"


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    count = float(re.search(r"^watchdog_batch_size_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^watchdog_batch_size_sum (\S+)$", text, re.M).group(1))
    return count, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    model = OUT / "mlp.onnx"
    model.write_bytes(mlp_onnx_bytes(40, 10, hidden=64))
    card = OUT / "card.json"
    card.write_text(
        json.dumps(
            {
                "name": "bench-mlp",
                "input_name": "x",
                "output_name": "logits",
                "num_features": 40,
                "classes": list(range(10)),
            }
        )
    )
    config = OUT / "watchdog.yaml"
    body = json.dumps({"inputs": np.random.default_rng(0).normal(size=(1, 40)).round(4).tolist()}).encode()

    servers = {
        "(a) ceiling: bare ASGI": lambda port: Child(
            [
                str(VENV_BIN / "python"),
                str(ROOT / "bench" / "serving_peers.py"),
                "ceiling",
                str(port),
                str(model),
            ],
            port,
            cpus=SERVER_CPUS,
        ),
        "(b) naive: FastAPI + pydantic + session.run": lambda port: Child(
            [
                str(VENV_BIN / "python"),
                str(ROOT / "bench" / "serving_peers.py"),
                "naive",
                str(port),
                str(model),
            ],
            port,
            cpus=SERVER_CPUS,
        ),
        "(c) distill-watchdog (metrics on, sampling off)": lambda port: Child(
            [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)],
            port,
            ready="/v2/health/ready",
            cpus=SERVER_CPUS,
        ),
    }
    # Each round starts each server in turn, alone on the server CPUs: with all three side by side
    # (idle peers wake on timers), one run gave the daemon a c1 p99 2.8 times the ceiling's, the
    # next with each alone 1.5 times. Interleaved rounds spread a slow minute on this shared
    # machine over every server instead of one.
    runs: dict[str, dict[int, list[Load]]] = {name: {1: [], 32: []} for name in servers}
    batches: list[float] = []
    for round_ in range(args.rounds):
        for name, make in servers.items():
            port = free_port()
            config.write_text(
                json.dumps(
                    {
                        "data_dir": str(OUT / f"data-{port}"),
                        "server": {"port": port, "log_format": "json"},
                        "student": {"model": str(model), "card": str(card)},
                        "sampling": {"rate": 0.0},
                    }
                )
            )
            with make(port) as server:
                url = server.url + "/v1/predict"
                warm(url, body)
                for conns in (1, 32):
                    before = batch_stats(server.url) if name.startswith("(c)") else None
                    load = wrk(url, body, conns, args.seconds, cpus=LOAD_CPUS)
                    runs[name][conns].append(load)
                    if before and conns == 32:
                        after = batch_stats(server.url)
                        batches.append((after[1] - before[1]) / max(1.0, after[0] - before[0]))
                    print(
                        f"round {round_ + 1} {name} c{conns}: {load.rps:.0f} req/s p99 {load.p99_ms:.2f} ms",
                        flush=True,
                    )
    results = {
        name: {conns: median_load(loads) for conns, loads in cells.items()} for name, cells in runs.items()
    }
    mean_batch = statistics.median(batches)

    a, b, c = (results[k] for k in servers)
    lines = ["| server | conc. | req/s | p50 ms | p99 ms | failed |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        for conns, r in res.items():
            lines.append(
                f"| {name} | {conns} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.failed} |"
            )
    thr_vs_a = c[32].rps / a[32].rps
    thr_vs_b = c[32].rps / b[32].rps
    p99_vs_a = c[1].p99_ms / a[1].p99_ms
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    lines += [
        "",
        "| ratio | value | target | |",
        "|---|---|---|---|",
        f"| (c)/(a) throughput at 32 | {thr_vs_a:.2f} | ≥ 0.60 | {verdict(thr_vs_a >= 0.6)} |",
        f"| (c)/(b) throughput at 32 | {thr_vs_b:.2f} | ≥ 3.0 | {verdict(thr_vs_b >= 3.0)} |",
        f"| (c)/(a) p99 at 1 | {p99_vs_a:.2f} | ≤ 2.0 | {verdict(p99_vs_a <= 2.0)} |",
        f"| micro-batcher mean batch size at 32 | {mean_batch:.1f} | | |",
    ]
    table = "\n".join(lines)
    print(table)
    every = "; ".join(
        f"{name.split(' ')[0]} c{conns}: "
        + ", ".join(f"{r.rps:,.0f} req/s p99 {r.p99_ms:.2f} ms" for r in loads)
        for name, cells in runs.items()
        for conns, loads in cells.items()
    )
    notes = (
        f"Medians of {args.rounds} interleaved rounds ({args.seconds} s per run after a warm-up); each "
        f"round starts each server in turn, alone. Every run: {every}. " + pinning_note()
    )
    if not args.no_append:
        record("serving", "Serving", command_line(), table, notes)


if __name__ == "__main__":
    main()
