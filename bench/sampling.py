"""Shadow sampling's cost on serving: the daemon with sampling off vs `rate: 0.1` to a slow teacher.

Same run, same machine, same wrk load (concurrency 32, one row per request): the daemon as a
child process (`distill-watchdog serve`, SQLite store) once with no teacher, once sampling
10% of rows to an OIP v2 teacher (tests/teachers/fake_teacher.py, its own process) that takes
200 ms per call. Targets: throughput >= 95% of sampling-off, p99 <= 1.1x, zero failed
requests. Also reports what became of the sampled rows (stored vs dropped), and a control run:
sampling off, with bench/background_load.py on the background CPU for the CPU share that
sampling's background work took (what any background work of that size costs serving on the
machine). Rounds are interleaved (off, on, control, off, ...); the targets are judged on the
median over rounds of each round's ratio to its own 'off' run. Appends its table to
docs/BENCHMARKS.md.

    .venv/bin/python bench/sampling.py [--seconds 10] [--rounds 4] [--no-append]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import common
import httpx
import numpy as np
from common import (
    BACKGROUND_CPUS,
    DAEMON_CPUS,
    LOAD_CPUS,
    ROOT,
    VENV_BIN,
    Child,
    Load,
    append_section,
    client_note,
    command_line,
    free_port,
    mlp_onnx_bytes,
    pinned,
    wake_interrupts,
    warm,
)

OUT = ROOT / "bench" / "out" / "sampling"
OUTCOMES = ("stored", "dropped", "quarantined", "teacher_error")


def wrk(url: str, body: bytes, connections: int, seconds: int) -> Load:
    """wrk with this script's own Lua file and body (bench/out/post.lua is shared with other scripts),
    on the CPU that serving does not use."""
    return common.wrk(url, body, connections, seconds, workdir=OUT, cpus=LOAD_CPUS)


def cpu_seconds(pid: int) -> float:
    """User + system CPU so far of a process and its live children (the teacher processes):
    a cost that noise from other work on the machine moves less than req/s does."""
    total = own_cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(int(child))
    return total


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU of the process alone (all its threads), without its children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def stand_in_load(mode: str, share: float, port: int) -> Iterator[None]:
    """In 'control' runs, background work of `share` of a CPU beside the load generator (idle priority)."""
    if mode != "control" or share <= 0:
        yield
        return
    argv = ["chrt", "-i", "0", str(VENV_BIN / "python"), str(ROOT / "bench" / "background_load.py"),
            "--share", f"{share:.4f}", "--db", str(OUT / f"load-{port}.db")]  # fmt: skip
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(pinned(argv, BACKGROUND_CPUS), stdout=quiet, stderr=quiet)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def samples(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    found = {o: 0.0 for o in OUTCOMES}
    for outcome, value in re.findall(r'^watchdog_samples_total\{outcome="(\w+)"\} (\S+)$', text, re.M):
        found[outcome] = float(value)
    depth = re.search(r"^watchdog_sample_queue_depth (\S+)$", text, re.M)
    found["queued"] = float(depth.group(1)) if depth else 0.0
    return found


def drain(url: str, timeout: float = 30.0) -> dict[str, float]:
    """Waits until the worker has written what was queued (so stored + dropped add up)."""
    deadline = time.monotonic() + timeout
    last = samples(url)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = samples(url)
        if now == last and now["queued"] == 0:
            return now
        last = now
    return last


def daemon_config(mode: str, port: int, model: Path, card: Path, teacher_url: str) -> Path:
    data: dict = {
        "data_dir": str(OUT / f"data-{mode}-{port}"),
        # Serving keeps its own CPU; shadow work, like the load generator, gets the other one (the
        # layout deploy.md recommends). Both modes, so that only sampling differs.
        "server": {"port": port, "log_format": "json", "background_cpus": BACKGROUND_CPUS or None},
        "student": {"model": str(model), "card": str(card)},
        "sampling": {"rate": 0.0},
    }
    if mode == "on":
        options = {"model_name": "big", "input_name": "x"}
        data["teachers"] = [{"name": "big", "kind": "http-v2", "location": teacher_url, "options": options}]
        data["sampling"] = {"rate": 0.1}
    config = OUT / f"watchdog-{mode}-{port}.yaml"
    config.write_text(json.dumps(data))
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--rounds", type=int, default=4, help="off/on/control rounds, interleaved; judged on the median"
    )
    parser.add_argument("--delay", type=float, default=0.2, help="teacher seconds per call")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    model, card = OUT / "mlp.onnx", OUT / "card.json"
    model.write_bytes(mlp_onnx_bytes(40, 10, hidden=64))
    card.write_text(
        json.dumps({"name": "bench-mlp", "input_name": "x", "output_name": "logits", "num_features": 40,
                    "classes": list(range(10))})
    )  # fmt: skip
    body = json.dumps({"inputs": np.random.default_rng(0).normal(size=(1, 40)).round(4).tolist()}).encode()
    teacher_port = free_port()
    teacher_argv = [str(VENV_BIN / "python"), str(ROOT / "tests" / "teachers" / "fake_teacher.py"),
                    "--port", str(teacher_port), "--delay", str(args.delay)]  # fmt: skip

    load_before = os.getloadavg()[0]
    serving_cpus = sorted(set(os.sched_getaffinity(0)) - set(LOAD_CPUS) - set(BACKGROUND_CPUS))
    runs: dict[str, list[tuple[Load, float]]] = {"off": [], "on": [], "control": []}
    wakes: dict[str, list[float]] = {"off": [], "on": [], "control": []}  # IPIs to wrk's CPU per request
    fates: list[dict[str, float]] = []
    shares: list[float] = []  # background CPU share (teacher processes + stand-in teacher) in 'on' runs
    # The teacher stands in for a remote service: it runs on the background CPU, off serving's.
    with Child(teacher_argv, teacher_port, cpus=BACKGROUND_CPUS) as teacher:
        for round_ in range(args.rounds):
            for mode in ("off", "on", "control"):
                port = free_port()
                config = daemon_config("on" if mode == "on" else "off", port, model, card, teacher.url)
                argv = [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)]
                share = float(np.median(shares)) if shares else 0.0
                child = Child(argv, port, ready="/v2/health/ready", cpus=DAEMON_CPUS)
                with child as daemon, stand_in_load(mode, share, port):
                    url = daemon.url + "/v1/predict"
                    warm(url, body)
                    wrk(url, body, 32, 3)  # unmeasured: start-up transients (first batches, eval set)
                    before, cpu0 = samples(daemon.url), cpu_seconds(daemon.proc.pid)
                    own0, peer0 = own_cpu_seconds(daemon.proc.pid), cpu_seconds(teacher.proc.pid)
                    ipi0 = wake_interrupts(LOAD_CPUS)
                    result = wrk(url, body, 32, args.seconds)
                    wakes[mode].append((wake_interrupts(LOAD_CPUS) - ipi0) / max(1, result.requests))
                    cpu_us = 1e6 * (cpu_seconds(daemon.proc.pid) - cpu0) / max(1, result.requests)
                    if mode == "on":
                        children = (
                            cpu_seconds(daemon.proc.pid) - cpu0 - (own_cpu_seconds(daemon.proc.pid) - own0)
                        )
                        shares.append((children + cpu_seconds(teacher.proc.pid) - peer0) / args.seconds)
                    runs[mode].append((result, cpu_us))
                    if mode == "on":
                        after = drain(daemon.url)
                        fates.append({o: after[o] - before[o] for o in OUTCOMES})
                extra = f", stand-in load {share:.1%} of a CPU" if mode == "control" else ""
                print(f"round {round_} {mode}: {result.rps:.0f} req/s, p99 {result.p99_ms:.2f} ms, "
                      f"failed {result.failed}, {cpu_us:.0f} us CPU/request, "
                      f"{wakes[mode][-1]:.2f} IPIs to wrk's CPU/request{extra}", flush=True)  # fmt: skip

    (off, off_cpu), (on, on_cpu), (ctl, ctl_cpu) = (
        max(runs[m], key=lambda r: r[0].rps) for m in ("off", "on", "control")
    )
    fate = {o: sum(f[o] for f in fates) for o in OUTCOMES}
    sampled = sum(fate.values()) or 1.0
    failed = sum(r.failed for rs in runs.values() for r, _ in rs)
    thr, p99 = on.rps / off.rps, on.p99_ms / off.p99_ms
    # The verdict: each round's 'on' (and control) against the 'off' run just before it, median
    # over rounds. Runs minutes apart differ by more than sampling's effect on a shared machine.
    paired = {
        mode: (
            float(np.median([r.rps / o.rps for (r, _), (o, _) in zip(runs[mode], runs["off"], strict=True)])),
            float(
                np.median(
                    [r.p99_ms / o.p99_ms for (r, _), (o, _) in zip(runs[mode], runs["off"], strict=True)]
                )
            ),
        )
        for mode in ("on", "control")
    }
    thr_med, p99_med = paired["on"]
    share = float(np.median(shares))
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    label = f"rate 0.1, teacher {args.delay * 1000:.0f} ms/call"
    lines = [
        "| sampling | req/s | p50 ms | p99 ms | failed | CPU µs/request | throughput vs off | p99 vs off |",
        "|---|---|---|---|---|---|---|---|",
        f"| off | {off.rps:,.0f} | {off.p50_ms:.2f} | {off.p99_ms:.2f} | {off.failed} | {off_cpu:.0f} "
        "| 1.00 | 1.00 |",
        f"| {label} | {on.rps:,.0f} | {on.p50_ms:.2f} | {on.p99_ms:.2f} | {on.failed} | {on_cpu:.0f} "
        f"| {thr:.3f} | {p99:.3f} |",
        f"| control: off + stand-in background load, {share:.1%} of a CPU | {ctl.rps:,.0f} "
        f"| {ctl.p50_ms:.2f} | {ctl.p99_ms:.2f} | {ctl.failed} | {ctl_cpu:.0f} | {ctl.rps / off.rps:.3f} "
        f"| {ctl.p99_ms / off.p99_ms:.3f} |",
        "",
        "| per-round ratios, median of rounds | throughput vs off | p99 vs off | wake-up IPIs to wrk's CPU "
        "per request (median) |",
        "|---|---|---|---|",
        f"| off | 1.000 | 1.000 | {np.median(wakes['off']):.2f} |",
        f"| {label} | {thr_med:.3f} | {p99_med:.3f} | {np.median(wakes['on']):.2f} |",
        f"| control | {paired['control'][0]:.3f} | {paired['control'][1]:.3f} | "
        f"{np.median(wakes['control']):.2f} |",
        "",
        "| target (median of per-round ratios) | value | |",
        "|---|---|---|",
        f"| throughput ≥ 0.95 × off | {thr_med:.3f} | {verdict(thr_med >= 0.95)} |",
        f"| p99 ≤ 1.1 × off | {p99_med:.3f} | {verdict(p99_med <= 1.1)} |",
        f"| zero failed requests (all runs) | {failed} | {verdict(failed == 0)} |",
        "",
        "| sampled rows (all 'on' runs) | count | share |",
        "|---|---|---|",
        *(f"| {o} | {fate[o]:,.0f} | {fate[o] / sampled:.1%} |" for o in OUTCOMES),
    ]
    each = "; ".join(
        f"{m}: " + ", ".join(f"{r.rps:,.0f} req/s p99 {r.p99_ms:.2f} ms ({c:.0f} µs CPU)" for r, c in rs)
        for m, rs in runs.items()
    )
    notes = (f"{args.rounds} interleaved off/on/control rounds, {args.seconds} s each after a 3 s "
             f"unmeasured "
             f"warm-up, wrk -t1 -c32, one row per request. CPU µs/request counts the daemon and its teacher "
             f"processes. Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work "
             f"shares this machine). Layout: serving on CPU {serving_cpus}; the stand-in teacher and the "
             f"daemon's shadow work on CPU {BACKGROUND_CPUS} (`server.background_cpus`, in every mode); "
             f"wrk on CPU {LOAD_CPUS}"
             f"{', beside the background work (a 2-CPU machine)' if BACKGROUND_CPUS == LOAD_CPUS else ''}. "
             f"The control row samples nothing: "
             f"it is 'off' with bench/background_load.py (JSON and SQLite work at idle priority, on CPU "
             f"{BACKGROUND_CPUS}) busy for the CPU share that sampling's background work used in the 'on' "
             f"runs "
             f"(teacher processes and the stand-in teacher, median {share:.1%}): what background work of "
             f"that size costs serving on this machine, sampling or not. Wake-up IPIs: rescheduling and "
             f"function-call interrupts received by wrk's CPU (/proc/interrupts), nearly all the serving "
             f"CPU waking wrk; the serving CPU pays for each, a cost remote clients would not bring "
             f"(docs/sampling.md). The first table shows each mode's "
             f"best run (highest req/s); the targets are judged on the median over rounds of each round's "
             f"ratio to its own 'off' run. {client_note()}. Every run: {each}.")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    print(notes)
    if not args.no_append:
        title = f"Shadow sampling cost ({args.seconds} s per run, wrk -t1 -c32)"
        append_section(title, command_line(), table, notes)


if __name__ == "__main__":
    main()
