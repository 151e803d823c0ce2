"""Figures of the closed loop (issue 5), recorded in docs/BENCHMARKS.md.

1. The demo scenario (MNIST-1D, three sensors, sensor c shifted): the shifted sensor's
   agreement with the teacher before the shift, after it, after promotion; the other
   sensors' change; time from the shift to the promotion.
2. Monitor cycle wall time on a 50k-row window (the cycle's own code, imports excluded).
3. Serving p99 with wrk while monitor cycles run back to back in the daemon's child
   process, against the same daemon with that process stopped, in alternating windows;
   once with the default layout and once with `server.background_cpus` (serving and
   background work on separate CPUs).

Usage: .venv/bin/python bench/loop.py [--quick] [--skip-demo] [--seconds S] [--pairs N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    LOAD_CPUS,
    ROOT,
    SERVER_CPUS,
    VENV_BIN,
    Child,
    client_note,
    command_line,
    free_port,
    record,
    warm,
    wrk,
)

sys.path.insert(0, str(ROOT / "tests"))
from distill_watchdog.config import load_settings
from distill_watchdog.loop.monitor.cycle import run_cycle
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store

from support import mlp_reference, mlp_weights, write_model

ROWS = 50_000


def seed_store(url: str, version: str, n: int, seed: int = 0) -> None:
    """n sampled rows of three sensors, answered by the seed-0 student and a seed-1 teacher."""
    import uuid

    from distill_watchdog.store import Store

    from support import SampleRecord, add_samples

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    rng = np.random.default_rng(seed)
    store = Store(url)
    now = time.time()
    for start in range(0, n, 5000):
        m = min(5000, n - start)
        x = rng.normal(size=(m, 40)).astype(np.float32)
        x[2::3] += 0.5  # sensor c drifts
        s = softmax(mlp_reference(x, mlp_weights(40, 10, seed=0)))
        t = softmax(mlp_reference(x, mlp_weights(40, 10, seed=1)))
        add_samples(
            store,
            [
                SampleRecord(
                    id=uuid.uuid4().hex,
                    request_id=uuid.uuid4().hex,
                    at=now - n + start + i,
                    features=x[i].round(5),
                    student_probs=s[i].round(6),
                    student_version=version,
                    slices={"sensor": "abc"[i % 3]},
                    quarantined=False,
                    teachers={"big": ("v1", t[i].round(6), False)},
                )
                for i in range(m)
            ],
        )
    store.close()


def _monitor_child(daemon_pid: int) -> int:
    """The pid of the daemon's monitor process (started with the first cycle that has data)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat.split(" (", 1)[1].rsplit(")", 1)
        if int(rest.split()[1]) == daemon_pid and name == "monitor":  # procs.spawn names it
            return int(entry.name)
    raise RuntimeError("no monitor process")


def _cycles(base: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith('watchdog_monitor_cycles_total{outcome="ok"}'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def latency_during_cycles(
    work: Path, background_cpus: list[int] | None, seconds: int, pairs: int, control: bool = False
) -> dict[str, Any]:
    """p99 with the monitor cycling back to back vs with its process stopped, in alternating windows.

    One daemon, one seeded 50k-row store; the monitor process is paused with SIGSTOP and resumed
    with SIGCONT between windows, so both states see the same data, caches and machine noise.
    `control`: the same with an idle-priority busy loop in place of the monitor process, which
    tells the cost of any background CPU use from the cost of the cycle's own work.
    """
    model, card = write_model(work / "models")
    np.savez(work / "reference.npz", x=np.random.default_rng(9).normal(size=(5000, 40)).astype(np.float32))
    port = free_port()
    config = {
        "data_dir": str(work / "data"),
        "server": {
            "port": port,
            "admin_token": "bench-admin-token-0001",
            "log_format": "json",
            "background_cpus": background_cpus,
        },
        "student": {"model": str(model), "card": str(card)},
        "teachers": [{"name": "big", "kind": "onnx", "location": str(model)}],
        "sampling": {"rate": 0.0},
        "monitor": {
            "interval_s": 1.0,
            "window": ROWS,
            "min_rows": 100,
            "reference": str(work / "reference.npz"),
            "leader_poll_s": 0.5,
        },
        # Monitor only: a run's training would be measured instead of the cycles.
        "policy": {"min_agreement": 0.0, "max_ece": 1.0, "max_drift_share": 1.0, "max_runs_per_day": 0},
    }
    path = work / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    body = json.dumps({"inputs": np.random.default_rng(0).normal(size=(1, 40)).round(4).tolist()}).encode()
    argv = [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(path)]
    # With background CPUs the daemon pins itself; wrk shares the background CPUs (a stand-in
    # client that would run elsewhere), so what background work costs it is still counted.
    load_cpus = background_cpus or None
    windows: dict[str, list[Any]] = {"paused": [], "running": []}
    cycles = 0.0
    with Child(argv, port, ready="/v2/health/ready") as child:
        url = f"{child.url}/v1/predict"
        warm(url, body)
        version = httpx.get(
            f"{child.url}/admin/models", headers={"Authorization": "Bearer bench-admin-token-0001"}
        ).json()["active"]
        seed_store(settings.store_url, version, ROWS)
        deadline = time.monotonic() + 300
        while _cycles(child.url) < 1 and time.monotonic() < deadline:  # the child is warm (imports done)
            time.sleep(0.5)
        assert child.proc is not None
        monitor = _monitor_child(child.proc.pid)
        spinner = None
        if control:
            os.kill(monitor, signal.SIGSTOP)
            where = ["taskset", "-c", ",".join(map(str, background_cpus))] if background_cpus else []
            spinner = subprocess.Popen([*where, "chrt", "-i", "0", sys.executable, "-c", "while True: pass"])
            monitor = spinner.pid
        try:
            for _ in range(pairs):
                for state in ("paused", "running"):
                    os.kill(monitor, signal.SIGSTOP if state == "paused" else signal.SIGCONT)
                    before = _cycles(child.url)
                    windows[state].append(wrk(url, body, connections=8, seconds=seconds, cpus=load_cpus))
                    if state == "running":
                        cycles += _cycles(child.url) - before
        finally:
            os.kill(monitor, signal.SIGCONT)
            if spinner is not None:
                spinner.kill()
                spinner.wait()

    def median(state: str, field: str) -> float:
        return float(np.median([getattr(w, field) for w in windows[state]]))

    return {
        "paused_p99_ms": median("paused", "p99_ms"),
        "running_p99_ms": median("running", "p99_ms"),
        "paused_rps": median("paused", "rps"),
        "running_rps": median("running", "rps"),
        "p99_ratios": [
            r.p99_ms / p.p99_ms for p, r in zip(windows["paused"], windows["running"], strict=True)
        ],
        "cycles": cycles,
        "failed": sum(w.failed for ws in windows.values() for w in ws),
        "settings_path": path,
    }


def cycle_time(path: Path) -> tuple[float, int]:
    """The cycle itself, in this process (imports excluded), on the seeded 50k rows."""
    settings = load_settings(path)
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)
    run_cycle(settings, store, registry)  # warm: imports, reference predictions
    began = time.perf_counter()
    result = run_cycle(settings, store, registry)
    return time.perf_counter() - began, result["rows"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the demo's quick scenario")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--seconds", type=int, default=6, help="per latency window")
    ap.add_argument("--pairs", type=int, default=5, help="stopped/running window pairs")
    args = ap.parse_args()
    rows = []
    notes = []
    if not args.skip_demo:
        from distill_watchdog.demo import QUICK, SHIFTED, Scenario, run_scenario

        with tempfile.TemporaryDirectory(prefix="wd-loop-") as tmp:
            res = run_scenario(Path(tmp), QUICK if args.quick else Scenario(), free_port())
        b, a = res["before"], res["after"]
        rows += [
            f"| shifted sensor {SHIFTED}: agreement before shift | {b[SHIFTED]:.1%} | |",
            f"| shifted sensor {SHIFTED}: after shift (old student) | {b['c-shifted']:.1%} | |",
            f"| shifted sensor {SHIFTED}: after promotion | {a['c-shifted']:.1%} | |",
            f"| share of lost agreement recovered | {res['recovered']:.0%} | ≥ 80% |",
        ]
        rows += [
            f"| sensor {s}: change after promotion | {100 * d:+.1f} pt | > −1 pt |"
            for s, d in res["others_change"].items()
        ]
        rows.append(f"| time from shift to promotion | {res['shift_to_promotion_s']:.0f} s | |")
        notes.append(f"Demo scenario: {'quick' if args.quick else 'full'}; run {res['run']['id']}.")
    layouts: dict[str, tuple[list[int] | None, bool]] = {"no `background_cpus` (default)": (None, False)}
    if LOAD_CPUS:
        layouts[f"`background_cpus: {LOAD_CPUS}`"] = (LOAD_CPUS, False)
    layouts["control, no `background_cpus`: idle-priority busy loop instead of cycles"] = (None, True)
    if LOAD_CPUS:
        layouts[f"control, `background_cpus: {LOAD_CPUS}`: the busy loop on CPU {LOAD_CPUS}"] = (
            LOAD_CPUS,
            True,
        )
    cycle: tuple[float, int] | None = None
    for label, (cpus, control) in layouts.items():
        with tempfile.TemporaryDirectory(prefix="wd-cycle-") as tmp:
            fig = latency_during_cycles(Path(tmp), cpus, args.seconds, args.pairs, control)
            cycle = cycle or cycle_time(fig["settings_path"])
        ratio = fig["running_p99_ms"] / fig["paused_p99_ms"]
        stopped, running = (
            ("busy loop stopped", "busy loop running")
            if control
            else ("monitor stopped", f"cycles back to back ({fig['cycles']:.0f} completed)")
        )
        rows += [
            f"| {label}: p99 (req/s), {stopped} "
            f"| {fig['paused_p99_ms']:.2f} ms ({fig['paused_rps']:,.0f}) | |",
            f"| {label}: p99 (req/s), {running} "
            f"| {fig['running_p99_ms']:.2f} ms ({fig['running_rps']:,.0f}) | |",
            f"| {label}: p99 running / stopped | {ratio:.2f}× "
            f"(pairs: {', '.join(f'{r:.2f}' for r in fig['p99_ratios'])}) | {'' if control else '≤ 1.3×'} |",
        ]
        if fig["failed"]:
            notes.append(f"{label}: {fig['failed']} failed requests.")
    assert cycle is not None
    rows.insert(
        -3 * len(layouts), f"| monitor cycle wall time, {cycle[1]:,}-row window | {cycle[0]:.1f} s | |"
    )
    notes.append(
        "Control: `chrt -i 0 python -c 'while True: pass'` toggled like the monitor (which stays stopped), "
        "on any CPU or on the background CPU: what any background CPU use costs, whatever the work. "
        "With `background_cpus` that CPU is also wrk's, so what remains there is mostly the load "
        "generator's own slowdown, which a client on another machine would not see."
    )
    notes.append(
        f"Latency: wrk -c8, {args.pairs} pairs of {args.seconds}-s windows alternating the monitor process "
        "stopped (SIGSTOP) and cycling back to back (SIGCONT); medians of the windows. The daemon runs "
        "monitor-only (`policy.max_runs_per_day: 0`). With `background_cpus` the daemon pins serving "
        f"to CPU {SERVER_CPUS} itself, and wrk runs on the background CPU {LOAD_CPUS} beside the monitor. "
        + client_note()
        + "."
    )
    table = "| figure | value | target |\n|---|---|---|\n" + "\n".join(rows)
    print(table)
    record("loop", "Closed loop", command_line(), table, "\n".join(notes))


if __name__ == "__main__":
    main()
