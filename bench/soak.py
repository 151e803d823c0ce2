"""Soak: steady load for minutes with 10% shadow sampling, monitor cycles and redistillation.

The daemon runs as `distill-watchdog serve` (SQLite store) with an ONNX student (MLP 40 -> 64
-> 10) and a local ONNX teacher; wrk holds `--connections` open connections posting one-row
bodies (512 distinct rows over three slices) for `--minutes`. Every `--interval-s` the script
reads the serving process's RSS and threads (/proc/PID/status), its open file descriptors
(/proc/PID/fd) and /metrics. It triggers `--runs` redistillations through the admin API, one
after another (one run: half-way through), when the daemon has runs.

Pass criteria (printed, and appended to docs/RELIABILITY.md unless --no-append):
- zero failed requests (non-2xx and socket errors, from wrk);
- RSS at the end <= 1.10 x RSS at the end of warm-up; also shown: the growth while only
  serving (segments between runs) and the step across each run;
- no growth in open fds or threads: the last third's maximum <= the first post-warm-up
  third's maximum + a small slack (fds 4, threads 2: scrapes and to_thread workers come and go);
- every sampled row accounted for: after the queue drains, stored + quarantined + teacher_error
  equals the rows in the samples table, dropped is counted, and stored + dropped + quarantined +
  teacher_error is within 5 sigma of 10% of the rows served;
- monitor cycles ran; each triggered run left `running`.

    .venv/bin/python bench/soak.py [--minutes 10] [--runs 1] [--connections 4] [--warmup-s 60] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import ROOT, VENV_BIN, Child, _ms, command_line, free_port, machine, mlp_onnx_bytes, warm

OUT = ROOT / "bench" / "out" / "soak"
RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
TOKEN = "soak-admin-token"
OUTCOMES = ("stored", "dropped", "quarantined", "teacher_error")
RATE = 0.1
FD_SLACK, THREAD_SLACK, RSS_GROWTH = 4, 2, 0.10


@dataclass
class Probe:
    t: float
    rss_kb: int
    threads: int
    fds: int
    served: float
    samples: dict[str, float]
    queued: float
    cycles: dict[str, float]


@dataclass
class Result:
    minutes: float
    requests: int = 0
    failed: int = 0
    rps: float = 0.0
    p99_ms: float = 0.0
    probes: list[Probe] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    run_windows: list[tuple[float, float]] = field(default_factory=list)  # (started, finished) in s
    db_rows: int = 0
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)


def proc_status(pid: int) -> tuple[int, int, int]:
    """RSS (kB), threads and open file descriptors of a process, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", text, re.M).group(1))
    threads = int(re.search(r"^Threads:\s+(\d+)", text, re.M).group(1))
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


def scrape(client: httpx.Client, url: str) -> tuple[float, dict[str, float], float, dict[str, float]]:
    """Rows answered 200 on /v1/predict, samples by outcome, queue depth, monitor cycles by outcome."""
    text = client.get(url + "/metrics").text
    served = sum(
        float(v)
        for v in re.findall(r'^watchdog_requests_total\{code="200",route="/v1/predict"\} (\S+)$', text, re.M)
    )
    samples = dict.fromkeys(OUTCOMES, 0.0)
    for outcome, value in re.findall(r'^watchdog_samples_total\{outcome="(\w+)"\} (\S+)$', text, re.M):
        samples[outcome] = float(value)
    depth = re.search(r"^watchdog_sample_queue_depth (\S+)$", text, re.M)
    cycles = {
        o: float(v)
        for o, v in re.findall(r'^watchdog_monitor_cycles_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }
    return served, samples, float(depth.group(1)) if depth else 0.0, cycles


def bodies(n: int = 512) -> list[str]:
    """Distinct one-row bodies over three slices (a redistillation needs varied, deduplicated rows)."""
    rng = np.random.default_rng(0)
    regions = ["eu", "us", "ap"]
    return [
        json.dumps({"inputs": [rng.normal(size=40).round(4).tolist()], "slice": {"region": regions[i % 3]}})
        for i in range(n)
    ]


def start_wrk(url: str, connections: int, seconds: int) -> subprocess.Popen[str]:
    """wrk cycling through `bodies()` (a Lua `request` function), this script's own Lua file."""
    script = OUT / "soak.lua"
    table = ",\n".join(f"[=[{b}]=]" for b in bodies())
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"local bodies = {{\n{table}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[(i % #bodies) + 1])\nend\n"
    )
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_wrk(out: str, result: Result) -> None:
    result.requests = int(re.search(r"(\d+) requests in", out).group(1))
    result.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    result.p99_ms = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result.failed = failed + (sum(int(g) for g in errors.groups()) if errors else 0)


def write_config(port: int, monitor_interval: float) -> Path:
    model, card, teacher = OUT / "mlp.onnx", OUT / "card.json", OUT / "teacher.onnx"
    model.write_bytes(mlp_onnx_bytes(40, 10, hidden=64))
    teacher.write_bytes(mlp_onnx_bytes(40, 10, hidden=256, seed=1))
    card.write_text(
        json.dumps(
            {
                "name": "soak-mlp",
                "input_name": "x",
                "output_name": "logits",
                "num_features": 40,
                "classes": list(range(10)),
            }
        )
    )
    config = OUT / "watchdog.yaml"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(OUT / "data"),
                "server": {"port": port, "admin_token": TOKEN, "log_format": "json"},
                "student": {"model": str(model), "card": str(card)},
                "teachers": [
                    {
                        "name": "big",
                        "kind": "onnx",
                        "location": str(teacher),
                        "options": {"output_kind": "logits", "version": "soak"},
                    }
                ],
                "sampling": {"rate": RATE},
                "monitor": {"interval_s": monitor_interval},
                "distill": {"job": {"train": {"epochs": 3}}, "timeout_s": 600},
            }
        )
    )
    return config


def trigger_run(client: httpx.Client, url: str) -> dict[str, Any] | None:
    """One redistillation through the admin API, or None when this daemon has no runs yet."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if client.get(url + "/admin/runs", headers=headers).status_code != 200:
        return None
    answer = client.post(url + "/admin/runs", headers=headers, json={"reason": "soak"})
    return (
        answer.json()
        if answer.status_code == 202
        else {"status": f"refused {answer.status_code}: {answer.text}"}
    )


def run_status(client: httpx.Client, url: str, run_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return client.get(f"{url}/admin/runs/{run_id}", headers=headers).json()


def sample_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM samples").fetchone()[0])


def judge(result: Result, warmup_s: float) -> None:
    after = [p for p in result.probes if p.t >= warmup_s]
    if len(after) < 3:
        result.checks["enough probes"] = (False, f"{len(after)} probes after warm-up")
        return
    third = max(1, len(after) // 3)
    first, last = after[:third], after[-third:]
    base, end = after[0], after[-1]
    result.checks["zero failed requests"] = (result.failed == 0, f"{result.failed} of {result.requests}")
    growth = end.rss_kb / base.rss_kb - 1
    result.checks["RSS growth after warm-up <= 10%"] = (
        growth <= RSS_GROWTH,
        f"{base.rss_kb / 1024:.0f} -> {end.rss_kb / 1024:.0f} MiB ({growth:+.1%}), "
        f"max {max(p.rss_kb for p in after) / 1024:.0f} MiB",
    )
    # Where it grew: while serving only, or in steps at redistillations (the job is built in-process).
    steps = []
    for started, finished in result.run_windows:
        before = [p for p in after if p.t < started]
        settled = [p for p in after if p.t > finished + 10]
        if before and settled:
            steps.append(
                f"{(settled[0].rss_kb - before[-1].rss_kb) / 1024:+.0f} MiB across the run at "
                f"{started:.0f}-{finished:.0f} s"
            )
    # Segments of serving only: between warm-up, runs (with 10 s to settle) and the end.
    edges = [(a - 5, b + 10) for a, b in result.run_windows]
    segments: list[list[Probe]] = [[]]
    for p in after:
        if any(a <= p.t <= b for a, b in edges):
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append(p)
    segments = [seg for seg in segments if len(seg) >= 2]
    if result.run_windows and segments:
        serving_growth = sum(seg[-1].rss_kb - seg[0].rss_kb for seg in segments) / base.rss_kb
        result.checks["RSS growth while serving only (outside runs) <= 10%"] = (
            serving_growth <= RSS_GROWTH,
            f"{serving_growth:+.1%} over {len(segments)} segments; " + "; ".join(steps),
        )
    for name, key, slack in (("open fds", "fds", FD_SLACK), ("threads", "threads", THREAD_SLACK)):
        a, b = max(getattr(p, key) for p in first), max(getattr(p, key) for p in last)
        result.checks[f"no growth in {name}"] = (b <= a + slack, f"first third max {a}, last third max {b}")
    final = result.probes[-1]
    s = final.samples
    sampled = sum(s.values())
    written = s["stored"] + s["quarantined"] + s["teacher_error"]
    sd = math.sqrt(final.served * RATE * (1 - RATE))
    within = abs(sampled - final.served * RATE) <= 5 * sd + 1
    result.checks["every sampled row accounted for"] = (
        final.queued == 0 and int(written) == result.db_rows and within,
        f"sampled {sampled:.0f} = stored {s['stored']:.0f} + dropped {s['dropped']:.0f} + quarantined "
        f"{s['quarantined']:.0f} + teacher_error {s['teacher_error']:.0f}; rows in store {result.db_rows}; "
        f"queue {final.queued:.0f}; {sampled / max(final.served, 1):.2%} of {final.served:.0f} rows served",
    )
    cycles = sum(final.cycles.values())
    result.checks["monitor cycles ran"] = (
        final.cycles.get("ok", 0) > 0 or cycles == 0,
        json.dumps(final.cycles) if cycles else "no monitor in this build",
    )
    for i, run in enumerate(result.runs):
        status = run.get("status", "?")
        result.checks[f"redistillation {i + 1} finished"] = (
            status not in ("running", "?") and not str(status).startswith("refused"),
            f"run {run.get('id', '?')}: {status} {run.get('error') or ''}".strip()[:300],
        )


def report(result: Result, argv: str) -> str:
    lines = [
        f"Load: wrk, {result.requests:,} requests in {result.minutes:g} min ({result.rps:,.0f} req/s), "
        f"p99 {result.p99_ms:.2f} ms.",
        "",
        "| check | passed | observed |",
        "|---|---|---|",
    ]
    for name, (ok, detail) in result.checks.items():
        lines.append(f"| {name} | {'yes' if ok else 'NO'} | {detail} |")
    probes = result.probes
    picks = [probes[int(i)] for i in np.linspace(0, len(probes) - 1, min(8, len(probes)))]
    lines += [
        "",
        "| t (s) | RSS MiB | threads | fds | rows served | sampled | queued |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in picks:
        lines.append(
            f"| {p.t:.0f} | {p.rss_kb / 1024:.0f} | {p.threads} | {p.fds} | {p.served:.0f} | "
            f"{sum(p.samples.values()):.0f} | {p.queued:.0f} |"
        )
    return "\n".join(lines)


def append(text: str, minutes: float, argv: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RELIABILITY.open("a") as fh:
        fh.write(
            f"\n### Soak, {minutes:g} min — {stamp}\n\nMachine: {machine()}. Command: `{argv}`\n\n{text}\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--monitor-interval-s", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=1, help="redistillations, one after another")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    port = free_port()
    config = write_config(port, args.monitor_interval_s)
    seconds = int(args.minutes * 60)
    body = bodies(1)[0].encode()
    result = Result(minutes=args.minutes)
    server = Child(
        [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)], port, ready="/v2/health/ready"
    )
    with server, httpx.Client(timeout=30) as client:
        assert server.proc is not None
        pid = server.proc.pid
        url = server.url
        warm(url + "/v1/predict", body)
        load = start_wrk(url + "/v1/predict", args.connections, seconds)
        time.sleep(1)
        if load.poll() is not None:
            raise SystemExit(f"wrk stopped at once:\n{load.stdout.read() if load.stdout else ''}")
        begin = time.monotonic()
        # Runs are triggered one after another, from the end of warm-up (or half-way for one run).
        first = max(args.warmup_s, seconds / 2) if args.runs == 1 else args.warmup_s
        due = [first + i * (seconds * 0.8 - first) / max(1, args.runs - 1) for i in range(args.runs)]
        run_id = ""
        while load.poll() is None:
            t = time.monotonic() - begin
            rss, threads, fds = proc_status(pid)
            served, samples, queued, cycles = scrape(client, url)
            result.probes.append(Probe(t, rss, threads, fds, served, samples, queued, cycles))
            if run_id:
                state = run_status(client, url, run_id)
                if state["status"] != "running":
                    result.runs[-1] = state
                    result.run_windows[-1] = (result.run_windows[-1][0], t)
                    print(
                        f"t={t:.0f}s: run {run_id} {state['status']} {state.get('error') or ''}", flush=True
                    )
                    run_id = ""
            elif due and t >= due[0]:
                due.pop(0)
                answer = trigger_run(client, url)
                if answer is None:
                    due.clear()
                else:
                    run_id = answer.get("id", "")
                    result.runs.append(answer)
                    result.run_windows.append((t, float(seconds)))
                    print(f"t={t:.0f}s: redistillation {run_id or answer}", flush=True)
            if len(result.probes) % 12 == 1:
                print(
                    f"t={t:.0f}s rss={rss / 1024:.0f}MiB threads={threads} fds={fds} served={served:.0f} "
                    f"sampled={sum(samples.values()):.0f} queued={queued:.0f}",
                    flush=True,
                )
            time.sleep(args.interval_s)
        parse_wrk(load.stdout.read() if load.stdout else "", result)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # let the queue drain and the last run finish
            served, samples, queued, cycles = scrape(client, url)
            status = run_status(client, url, run_id)["status"] if run_id else "none"
            if queued == 0 and status != "running":
                break
            time.sleep(1)
        time.sleep(3)  # a last bulk write on the worker's interval
        rss, threads, fds = proc_status(pid)
        served, samples, queued, cycles = scrape(client, url)
        result.probes.append(
            Probe(time.monotonic() - begin, rss, threads, fds, served, samples, queued, cycles)
        )
        if run_id:
            result.runs[-1] = run_status(client, url, run_id)
    result.db_rows = sample_rows(OUT / "data" / "watchdog.db")
    judge(result, args.warmup_s)
    text = report(result, command_line())
    print(text)
    (OUT / "soak.json").write_text(json.dumps(asdict(result), default=str, indent=1))
    if not args.no_append:
        append(text, args.minutes, command_line())
    if not all(ok for ok, _ in result.checks.values()):
        raise SystemExit("soak: some checks failed")


if __name__ == "__main__":
    main()
