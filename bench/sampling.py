"""Shadow sampling's cost on serving: the daemon with sampling off vs `rate: 0.1` to a slow teacher.

Same run, same machine, same wrk load (concurrency 32, one row per request): the daemon as a
child process (`distill-watchdog serve`, SQLite store) once with no teacher, once sampling
10% of rows to an OIP v2 teacher (tests/teachers/fake_teacher.py, its own process) that takes
200 ms per call. Targets: throughput >= 95% of sampling-off, p99 <= 1.1x, zero failed
requests. Also reports what became of the sampled rows (stored vs dropped), and a control run:
sampling off, with bench/background_load.py on the background CPU for the CPU share that
sampling's background work took (what any background work of that size costs serving on the
machine). Rounds are interleaved (off, on, control; then control, on, off; and so on); the
targets are judged on the median over rounds of each round's ratio to its own 'off' run. On a
2-CPU machine every round runs in two layouts, wrk beside serving (where the targets are
judged, throughput as the serving process's CPU per request) and wrk beside the background
work (see `layouts`).
Appends its table to docs/BENCHMARKS.md.

    .venv/bin/python bench/sampling.py [--seconds 10] [--rounds 6] [--no-append]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    pinned,
    wake_interrupts,
    warm,
)

OUT = ROOT / "bench" / "out" / "sampling"
OUTCOMES = ("stored", "dropped", "quarantined", "teacher_error")


def wrk(url: str, body: bytes, connections: int, seconds: int, cpus: list[int]) -> Load:
    """wrk with this script's own Lua file and body (bench/out/post.lua is shared with other scripts)."""
    return common.wrk(url, body, connections, seconds, workdir=OUT, cpus=cpus)


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
def stand_in_load(mode: str, share: float, port: int) -> Iterator[int | None]:
    """In 'control' runs, background work of `share` of a CPU beside the load generator (idle
    priority); yields its pid."""
    if mode != "control" or share <= 0:
        yield None
        return
    argv = ["chrt", "-i", "0", str(VENV_BIN / "python"), str(ROOT / "bench" / "background_load.py"),
            "--share", f"{share:.4f}", "--db", str(OUT / f"load-{port}.db")]  # fmt: skip
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(pinned(argv, BACKGROUND_CPUS), stdout=quiet, stderr=quiet)
    try:
        yield proc.pid
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


@dataclass
class Run:
    load: Load
    cpu_us: float  # daemon + teacher processes, per request
    serving_us: float  # the serving process alone (all its threads), per request
    wakes: float  # wake-up IPIs received by wrk's CPU, per request


def layouts(serving_cpus: list[int]) -> dict[str, list[int]]:
    """Where wrk runs: {layout: wrk's CPUs}. The first is the one the targets are judged in.

    With 3 or more CPUs wrk has a CPU of its own. With 2 it must share one, and both choices are
    measured: beside the background work, the serving CPU sends an interrupt each time it wakes
    wrk, and background work on wrk's CPU makes those wake-ups more frequent, a cost a remote
    client would not bring; beside serving, wrk's wake-ups are local but wrk takes part of the
    serving CPU, which dilutes the req/s ratio, so the throughput target is judged there on the
    serving process's CPU time per request (its capacity), not on req/s.
    """
    if not LOAD_CPUS:  # no pinning (BENCH_NO_PIN, or no taskset): one layout, the kernel's
        return {"unpinned": []}
    if BACKGROUND_CPUS != LOAD_CPUS or not serving_cpus:
        return {"client apart": LOAD_CPUS}
    return {"client beside serving": serving_cpus, "client beside background": LOAD_CPUS}


def order(round_: int) -> tuple[str, ...]:
    """The modes of one round: 'on' in the middle, 'off' first in even rounds and last in odd ones,
    so that a drift of the machine over the run (the host's other load, caches, the store's file
    system) favours neither mode."""
    modes = ("off", "on", "control")
    return modes if round_ % 2 == 0 else modes[::-1]


def ratios(runs: dict[str, list[Run]], mode: str) -> tuple[float, float, float]:
    """Median over rounds of (req/s, serving capacity, p99) against the same round's 'off' run."""
    pairs = list(zip(runs[mode], runs["off"], strict=True))
    return (
        float(np.median([r.load.rps / o.load.rps for r, o in pairs])),
        float(np.median([o.serving_us / r.serving_us for r, o in pairs])),
        float(np.median([r.load.p99_ms / o.load.p99_ms for r, o in pairs])),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="off/on/control rounds, interleaved, the order reversed every other round; judged on the median",
    )
    parser.add_argument("--delay", type=float, default=0.2, help="teacher seconds per call")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    model, card, body = common.fresh_files(OUT)
    teacher_port = free_port()
    teacher_argv = common.stand_in_teacher(teacher_port, args.delay)

    load_before = os.getloadavg()[0]
    serving_cpus = sorted(set(os.sched_getaffinity(0)) - set(LOAD_CPUS) - set(BACKGROUND_CPUS))
    places = layouts(serving_cpus)
    judged = next(iter(places))
    runs = {place: {"off": [], "on": [], "control": []} for place in places}
    fates: list[dict[str, float]] = []
    shares: list[float] = []  # background CPU share (teacher processes + stand-in teacher) in 'on' runs
    loads: list[float] = []  # the stand-in load's CPU share, as it ran, in 'control' runs
    # The teacher stands in for a remote service: it runs on the background CPU, off serving's.
    with Child(teacher_argv, teacher_port, cpus=BACKGROUND_CPUS) as teacher:
        for round_ in range(args.rounds):
            for place, client in places.items():
                for mode in order(round_):
                    port = free_port()
                    config = daemon_config("on" if mode == "on" else "off", port, model, card, teacher.url)
                    argv = [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)]
                    share = float(np.median(shares)) if shares else 0.0
                    child = Child(argv, port, ready="/v2/health/ready", cpus=DAEMON_CPUS)
                    with child as daemon, stand_in_load(mode, share, port) as load:
                        url = daemon.url + "/v1/predict"
                        pid = daemon.proc.pid
                        warm(url, body)
                        wrk(url, body, 32, 3, client)  # unmeasured: start-up transients
                        before, cpu0, own0 = samples(daemon.url), cpu_seconds(pid), own_cpu_seconds(pid)
                        peer0, ipi0 = cpu_seconds(teacher.proc.pid), wake_interrupts(client)
                        load0 = own_cpu_seconds(load) if load else 0.0
                        result = wrk(url, body, 32, args.seconds, client)
                        n = max(1, result.requests)
                        run = Run(
                            result,
                            1e6 * (cpu_seconds(pid) - cpu0) / n,
                            1e6 * (own_cpu_seconds(pid) - own0) / n,
                            (wake_interrupts(client) - ipi0) / n,
                        )
                        if load:
                            loads.append((own_cpu_seconds(load) - load0) / args.seconds)
                        if mode == "on":
                            children = cpu_seconds(pid) - cpu0 - (own_cpu_seconds(pid) - own0)
                            shares.append((children + cpu_seconds(teacher.proc.pid) - peer0) / args.seconds)
                            after = drain(daemon.url)
                            fates.append({o: after[o] - before[o] for o in OUTCOMES})
                    runs[place][mode].append(run)
                    extra = f", stand-in load {loads[-1]:.1%} of a CPU (asked {share:.1%})" if load else ""
                    print(
                        f"round {round_} {place} {mode}: {result.rps:.0f} req/s, p99 {result.p99_ms:.2f} ms, "
                        f"failed {result.failed}, {run.cpu_us:.0f} us CPU/request "
                        f"({run.serving_us:.1f} serving), {run.wakes:.2f} IPIs to wrk's CPU/request{extra}",
                        flush=True,
                    )

    fate = {o: sum(f[o] for f in fates) for o in OUTCOMES}
    sampled = sum(fate.values()) or 1.0
    failed = sum(r.load.failed for modes in runs.values() for rs in modes.values() for r in rs)
    share = float(np.median(shares))
    ran = float(np.median(loads)) if loads else 0.0
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    label = f"rate 0.1, teacher {args.delay * 1000:.0f} ms/call"
    names = {
        "off": "off",
        "on": label,
        "control": f"control: off + stand-in background load, {ran:.1%} of a CPU",
    }
    lines = [
        "| layout | sampling | best req/s | p50 ms | p99 ms | CPU µs/request (serving) | req/s vs off "
        "| serving capacity vs off | p99 vs off | wake-up IPIs to wrk's CPU per request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for place, modes in runs.items():
        for mode, rs in modes.items():
            best = max(rs, key=lambda r: r.load.rps)
            thr, capacity, p99 = ratios(modes, mode) if mode != "off" else (1.0, 1.0, 1.0)
            lines.append(
                f"| {place} | {names[mode]} | {best.load.rps:,.0f} | {best.load.p50_ms:.2f} "
                f"| {best.load.p99_ms:.2f} | {np.median([r.cpu_us for r in rs]):.0f} "
                f"({np.median([r.serving_us for r in rs]):.1f}) | {thr:.3f} | {capacity:.3f} | {p99:.3f} "
                f"| {np.median([r.wakes for r in rs]):.2f} |"
            )
    thr, capacity, p99 = ratios(runs[judged], "on")
    throughput = capacity if judged == "client beside serving" else thr
    measure = "serving capacity" if judged == "client beside serving" else "req/s"
    lines += [
        "",
        f"| target ({judged}; median of per-round ratios) | value | |",
        "|---|---|---|",
        f"| throughput ({measure}) ≥ 0.95 × off | {throughput:.3f} | {verdict(throughput >= 0.95)} |",
        f"| p99 ≤ 1.1 × off | {p99:.3f} | {verdict(p99 <= 1.1)} |",
        f"| zero failed requests (all runs) | {failed} | {verdict(failed == 0)} |",
        "",
        "| sampled rows (all 'on' runs) | count | share |",
        "|---|---|---|",
        *(f"| {o} | {fate[o]:,.0f} | {fate[o] / sampled:.1%} |" for o in OUTCOMES),
    ]
    each = "; ".join(
        f"{place} {m}: " + ", ".join(f"{r.load.rps:,.0f} req/s p99 {r.load.p99_ms:.2f} ms" for r in rs)
        for place, modes in runs.items()
        for m, rs in modes.items()
    )
    where = "; ".join(f"{place}: wrk on CPU {cpus}" for place, cpus in places.items())
    notes = (f"{args.rounds} interleaved rounds of off/on/control in each layout (the order reversed "
             f"every other round), {args.seconds} s per "
             f"run after a 3 s unmeasured warm-up, wrk -t1 -c32, one row per request. Serving on CPU "
             f"{serving_cpus}; the stand-in teacher and the daemon's shadow work on CPU {BACKGROUND_CPUS} "
             f"(`server.background_cpus`, in every mode); {where}. Targets are judged {judged}. "
             f"CPU µs/request counts the daemon and its teacher processes, (serving) the serving process "
             f"alone; serving capacity vs off is the serving process's CPU per request off ÷ on (what "
             f"a serving CPU kept busy by remote clients would do), req/s vs off what wrk saw. "
             f"The control samples nothing: 'off' with bench/background_load.py (JSON and SQLite work "
             f"at idle priority, on CPU {BACKGROUND_CPUS}) for the CPU time that sampling's background "
             f"work took in the 'on' runs (teacher processes and the stand-in teacher, median "
             f"{share:.1%}; the stand-in took a median {ran:.1%}): what background work of that size "
             f"costs serving on this machine, sampling or not. Wake-up IPIs: rescheduling and "
             f"function-call interrupts received by wrk's CPU (/proc/interrupts); beside background "
             f"work, nearly all are the serving CPU waking wrk, and the serving CPU pays for each "
             f"(docs/sampling.md). Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
             f"after. {client_note()}. Every run: {each}.")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    print(notes)
    if not args.no_append:
        title = f"Shadow sampling cost ({args.seconds} s per run, wrk -t1 -c32)"
        append_section(title, command_line(), table, notes)


if __name__ == "__main__":
    main()
