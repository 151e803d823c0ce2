"""Shadow sampling's cost on serving in instructions: the serving process under callgrind.

Wall-clock ratios on a shared 2-vCPU guest move by a few percent from one run to the next
(bench/sampling.py judges them on medians over rounds for that reason). Instructions executed
do not: valgrind's callgrind counts them, and the same daemon under the same load gives the
same count per request to within 0.1–0.3%. This runs the daemon (`distill-watchdog serve`, SQLite
store) under callgrind with wrk at concurrency 32, one row per request, in three modes:

- off: no teacher (bench/sampling.py's 'off');
- idle: the teacher configured at `rate: 0`, so every request goes through `offer` and
  nothing is sampled: the request path's share alone;
- on: `rate: 0.1` to the stand-in OIP v2 teacher (tests/teachers/fake_teacher.py, 200 ms
  per call), as in bench/sampling.py.

It counts every thread of the serving process, not its teacher processes (they run apart,
on the background CPU). Under callgrind the daemon serves about 45 times fewer requests a
second, so every interval is stretched by the measured slowdown (batch wait, flush, store
and scheduler polls): otherwise the work done once per interval would weigh 45 times more per
request than it does at full speed. What this cannot show is time that is not instructions
(cache misses, the other CPU's load): bench/sampling.py measures that.

    .venv/bin/python bench/sampling_instructions.py [--seconds 60] [--warm 60] [--rounds 2] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
from common import (
    BACKGROUND_CPUS,
    LOAD_CPUS,
    ROOT,
    VENV_BIN,
    Child,
    command_line,
    free_port,
    fresh_files,
    record,
    stand_in_teacher,
    warm,
    wrk,
)

OUT = ROOT / "bench" / "out" / "sampling_instructions"
MODES = ("off", "idle", "on")
TEACHER_DELAY_S = 0.2


def daemon_config(mode: str, port: int, model: Path, card: Path, teacher_url: str, stretch: float) -> Path:
    """bench/sampling.py's daemon, its intervals stretched by `stretch` in every mode."""
    data: dict = {
        "data_dir": str(OUT / f"data-{mode}-{port}"),
        "server": {"port": port, "log_format": "json", "background_cpus": BACKGROUND_CPUS or None},
        "student": {"model": str(model), "card": str(card)},
        "store": {"poll_interval_s": 2.0 * stretch},
        "monitor": {
            "interval_s": 60.0 * stretch,
            "leader_poll_s": 5.0 * stretch,
            "retention_interval_s": 3600.0 * stretch,
        },
        "sampling": {"rate": 0.0, "batch_wait_s": 0.25 * stretch, "flush_s": 0.5 * stretch},
    }
    if mode != "off":
        options = {"model_name": "big", "input_name": "x"}
        data["teachers"] = [{"name": "big", "kind": "http-v2", "location": teacher_url, "options": options}]
        data["sampling"]["rate"] = 0.1 if mode == "on" else 0.0
    config = OUT / f"watchdog-{mode}-{port}.yaml"
    config.write_text(json.dumps(data))
    return config


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def instructions(dump: Path) -> int:
    """The total instructions (Ir) of one callgrind dump."""
    return int(re.search(r"^summary: (\d+)", dump.read_text(), re.M).group(1))


def stored_rows(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=60).text
    m = re.search(r'^watchdog_samples_total\{outcome="stored"\} (\S+)', text, re.M)
    return float(m.group(1)) if m else 0.0


def measure(
    mode: str, files: tuple[Path, Path], teacher: str, body: bytes, stretch: float, warm_s: int, seconds: int
) -> tuple[float, float, float]:
    """(instructions per request, req/s under callgrind, rows stored in the window) for one daemon."""
    port = free_port()
    config = daemon_config(mode, port, *files, teacher, stretch)
    dump = OUT / f"callgrind-{mode}-{port}.out"
    serve = [str(VENV_BIN / "python"), str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)]
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dump}", *serve]
    with Child(argv, port, ready="/v2/health/ready") as daemon:
        assert daemon.proc is not None
        url = daemon.url + "/v1/predict"
        warm(url, body, n=50)
        callgrind(daemon.proc.pid, "--instr=on")
        wrk(url, body, 32, warm_s, workdir=OUT, cpus=LOAD_CPUS)  # instrumented, so the pace is the window's
        stored0 = stored_rows(daemon.url)
        callgrind(daemon.proc.pid, "--zero")
        load = wrk(url, body, 32, seconds, workdir=OUT, cpus=LOAD_CPUS)
        callgrind(daemon.proc.pid, "--dump")
        callgrind(daemon.proc.pid, "--instr=off")
        stored = stored_rows(daemon.url) - stored0
        if load.failed:
            raise SystemExit(f"{mode}: {load.failed} failed requests under callgrind")
    window = Path(f"{dump}.1")
    return instructions(window) / max(1, load.requests), load.rps, stored


def main() -> None:
    parser = argparse.ArgumentParser()
    # At least a few stretched flush intervals each (0.5 s x the slowdown, about 20 s): the first
    # writes and the eval set's freezing are start-up work, not the steady state.
    parser.add_argument("--seconds", type=int, default=60, help="counted window per daemon")
    parser.add_argument("--warm", type=int, default=60, help="instrumented warm-up per daemon")
    parser.add_argument("--rounds", type=int, default=2, help="off/idle/on rounds, every other one reversed")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")

    model, card, body = fresh_files(OUT)
    teacher_port = free_port()
    teacher_argv = stand_in_teacher(teacher_port, TEACHER_DELAY_S)

    counts: dict[str, list[float]] = {m: [] for m in MODES}
    paces: dict[str, list[float]] = {m: [] for m in MODES}
    rows = []
    with Child(teacher_argv, teacher_port, cpus=BACKGROUND_CPUS) as teacher:
        # The slowdown: the same daemon's pace at full speed and under callgrind.
        port = free_port()
        config = daemon_config("off", port, model, card, teacher.url, 1.0)
        with Child([str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)], port,
                   ready="/v2/health/ready") as daemon:  # fmt: skip
            url = daemon.url + "/v1/predict"
            warm(url, body)
            native = wrk(url, body, 32, 5, workdir=OUT, cpus=LOAD_CPUS).rps
        _, slow, _ = measure("off", (model, card), teacher.url, body, 40.0, 5, 10)
        stretch = native / slow
        print(f"{native:,.0f} req/s at full speed, {slow:,.0f} under callgrind: x{stretch:.0f}", flush=True)
        for round_ in range(args.rounds):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                started = time.monotonic()
                per_request, pace, stored = measure(
                    mode, (model, card), teacher.url, body, stretch, args.warm, args.seconds
                )
                counts[mode].append(per_request)
                paces[mode].append(pace)
                if mode == "on":
                    rows.append(stored)
                print(
                    f"round {round_} {mode}: {per_request:,.0f} instructions/request, {pace:.0f} req/s, "
                    f"{stored:.0f} rows stored ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )

    base = float(np.median(counts["off"]))
    names = {
        "off": "off",
        "idle": "teacher configured, rate 0 (offer only)",
        "on": "rate 0.1, teacher 200 ms/call",
    }
    lines = [
        "| sampling | instructions/request (each run) | median | vs off | capacity vs off (instructions) |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        median = float(np.median(counts[mode]))
        each = ", ".join(f"{c:,.0f}" for c in counts[mode])
        ratio = base / median
        lines.append(f"| {names[mode]} | {each} | {median:,.0f} | {median - base:+,.0f} | {ratio:.3f} |")
    notes = (
        f"{args.rounds} rounds of off/idle/on (the order reversed every other round); each daemon under "
        f"`valgrind --tool=callgrind`, instrumented for a {args.warm} s warm-up and a {args.seconds} s "
        "window that is counted, wrk -t1 -c32 on CPU "
        f"{LOAD_CPUS or 'any'}, one row per request. Counts cover every thread of the serving process, not "
        f"its teacher processes. Slowdown under callgrind: {native:,.0f} req/s at full speed, {slow:,.0f} "
        "under callgrind; every interval (batch wait, flush, store and scheduler polls) stretched "
        f"x{stretch:.0f}. "
        f"Rows stored in the 'on' windows: {', '.join(f'{r:,.0f}' for r in rows)} "
        f"({np.median(rows) / args.seconds / np.median(paces['on']):.3f} per request). "
        "Capacity here is what a CPU that only executes instructions would show; bench/sampling.py measures "
        "the rest (cache misses, the other CPU's load)."
    )
    table = "\n".join(lines)
    print(table)
    print(notes)
    if not args.no_append:
        record(
            "sampling_instructions",
            "Shadow sampling cost in instructions (callgrind)",
            command_line(),
            table,
            notes,
        )


if __name__ == "__main__":
    main()
