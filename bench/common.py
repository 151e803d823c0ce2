"""Shared by the bench scripts: servers as child processes, wrk load, result tables.

Ratios are taken within one run: these machines are noisy, so every comparison is between
figures measured minutes apart on the same machine by the same load generator.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

from support import free_port, mlp_onnx_bytes, wait_ready  # noqa: E402

__all__ = ["free_port", "mlp_onnx_bytes", "wait_ready"]


def _cpu_split() -> tuple[list[int], list[int]]:
    """Servers on all CPUs but the last, the load generator on the last one.

    Unpinned, the kernel moves the server and wrk between the cores and the same run varies by
    a third from one try to the next; pinned, each side has its own core and ratios hold.
    `BENCH_NO_PIN=1` turns it off.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None or os.environ.get("BENCH_NO_PIN"):
        return [], []
    return cpus[:-1], cpus[-1:]


SERVER_CPUS, LOAD_CPUS = _cpu_split()


def _background_split() -> tuple[list[int], list[int]]:
    """(daemon CPUs, background CPUs) for a daemon that sets `server.background_cpus`.

    Three CPUs or more: wrk keeps the last one to itself, the daemon gets the others and puts
    its background processes on the last of those, as a client on another machine would leave
    it. Two: wrk's CPU is the background CPU (daemon CPUs: unpinned). There the serving CPU pays
    an inter-processor interrupt each time it wakes wrk while background work runs beside it,
    a cost a remote client would not bring (docs/sampling.md); bench/sampling.py also runs wrk
    beside serving on such machines.
    """
    if not LOAD_CPUS:
        return [], []
    daemon = [c for c in sorted(os.sched_getaffinity(0)) if c not in LOAD_CPUS]
    if len(daemon) >= 2:
        return daemon, daemon[-1:]
    return [], LOAD_CPUS


DAEMON_CPUS, BACKGROUND_CPUS = _background_split()


def _client_priority() -> list[str]:
    """`chrt -f 1` for wrk where the machine allows it (root or CAP_SYS_NICE); else nothing.

    wrk stands in for callers on other machines, but here it shares a CPU with the daemon's
    idle-priority background work (teacher processes, the monitor). At normal priority that
    work's wake-ups and time slices delay wrk itself, and wrk's slowdown reads as the daemon's:
    an idle-priority busy loop on wrk's CPU (2-vCPU guest, 2026-11-28) took 11% of the req/s and
    raised p99 1.32x, though it did not slow a loop timed on the serving CPU. As a real-time
    task wrk runs whenever it is ready; what remains is the cost of switching to it. Both sides
    of every same-run ratio get the same priority. `BENCH_NO_RT=1` turns it off.
    """
    if os.environ.get("BENCH_NO_RT") or shutil.which("chrt") is None:
        return []
    probe = subprocess.run(["chrt", "-f", "1", "true"], capture_output=True)
    return ["chrt", "-f", "1"] if probe.returncode == 0 else []


CLIENT_PRIORITY = _client_priority()
# Several wrks sharing one CPU (bench/sampling.py's bursts to two daemons at once). Real-time
# tasks of one priority take turns only when the running one blocks, so one wrk held the CPU
# while the other's responses waited: the split of requests between the daemons swung from
# burst to burst, and with the serving CPU shared equally the daemon sent more requests served
# them in bigger, cheaper batches. Two 'off'/'on' daemons served at once, 2-vCPU AMD EPYC guest
# (2026-12-05), 20 interleaved bursts per priority: SCHED_FIFO 1 read capacity 0.941 with a
# spread of 0.062 (sd of log ratios), nice -10 read 0.977 with 0.017, normal priority 0.973
# with 0.019. nice -10 shares the CPU fairly between the wrks and still puts them far ahead of
# the idle-priority background work (CFS weight 9548 against 15).
SHARED_CLIENT_PRIORITY = ["nice", "-n", "-10"] if CLIENT_PRIORITY else []


def wake_interrupts(cpus: list[int]) -> int:
    """Rescheduling and function-call interrupts received so far by `cpus` (/proc/interrupts).

    On Linux these are the inter-processor interrupts by which one CPU wakes a task on another:
    here, mostly the serving CPU waking wrk when a response is ready. The serving CPU pays for
    each one it sends (in a VM, an exit to the hypervisor), so more of them per request is a cost
    that clients on other machines would not impose. 0 where the file cannot be read.
    """
    try:
        lines = Path("/proc/interrupts").read_text().splitlines()
    except OSError:
        return 0
    columns = {int(name[3:]): i for i, name in enumerate(lines[0].split()) if name.startswith("CPU")}
    total = 0
    for line in lines[1:]:
        parts = line.split()
        if parts and parts[0] in ("RES:", "CAL:"):
            total += sum(int(parts[1 + columns[c]]) for c in cpus if c in columns)
    return total


def pinned(argv: list[str], cpus: list[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus)), *argv] if cpus else argv


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int


def median_load(loads: list[Load]) -> Load:
    """Each figure's median over repeated runs (failures and requests summed): one slow run of
    several, which this shared machine gives now and then, does not decide a ratio."""
    return Load(
        rps=statistics.median(r.rps for r in loads),
        p50_ms=statistics.median(r.p50_ms for r in loads),
        p99_ms=statistics.median(r.p99_ms for r in loads),
        requests=sum(r.requests for r in loads),
        failed=sum(r.failed for r in loads),
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot parse latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def replace_file(path: Path, data: bytes) -> None:
    """Writes `path` whole or not at all. Loads to several daemons at once start a wrk each, and
    each writes the same script and body: written in place, one wrk could read the body while
    another had just emptied the file, and send an empty body (400) for its whole burst."""
    part = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    part.write_bytes(data)
    os.replace(part, path)


def wrk(
    url: str,
    body: bytes,
    connections: int,
    seconds: int,
    threads: int = 1,
    workdir: Path | None = None,
    cpus: list[int] | None = None,
    shared: bool = False,
) -> Load:
    """POSTs `body` with wrk; failed = non-2xx + socket errors. `workdir` holds the Lua script and
    body. `shared`: other wrks run on the same CPUs at the same time (SHARED_CLIENT_PRIORITY)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    script = (workdir or ROOT / "bench" / "out") / "post.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    replace_file(script.parent / "body.json", body)
    lua = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{script.parent / "body.json"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    replace_file(script, lua.encode())
    out = subprocess.run(
        pinned(
            [
                *(SHARED_CLIENT_PRIORITY if shared else CLIENT_PRIORITY),
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            cpus or [],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # The latency distribution lines start with the percentile (the stdev column also ends in "%").
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    failed = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        failed += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        failed += sum(int(g) for g in m.groups())
    return Load(rps, p50, p99, requests, failed)


class Child:
    """A server in its own process, started and stopped around a measurement."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        env: dict[str, str] | None = None,
        ready: str = "/",
        cpus: list[int] | None = None,
    ) -> None:
        """`cpus`: where it runs (SERVER_CPUS for a measured server, LOAD_CPUS for a stand-in remote
        peer; default: anywhere)."""
        self.argv, self.port, self.ready = pinned(argv, cpus or []), port, ready
        self.env = {**os.environ, "DO_NOT_TRACK": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Child:
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_ready(self.url, timeout=60, path=self.ready)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def warm(url: str, body: bytes, n: int = 200) -> None:
    with httpx.Client() as client:
        for _ in range(n):
            client.post(url, content=body, headers={"content-type": "application/json"})


def client_note() -> str:
    if CLIENT_PRIORITY:
        return (
            "wrk runs as a real-time task (SCHED_FIFO 1, `chrt -f 1`), ahead of background work on its "
            "CPU; wrks that share a CPU at the same time run at nice -10 instead"
        )
    return "wrk runs at normal priority (no chrt, no permission, or BENCH_NO_RT)"


def pinning_note() -> str:
    if not SERVER_CPUS:
        return "Not pinned (one CPU, no taskset, or BENCH_NO_PIN). " + client_note() + "."
    return (
        f"Servers (and their child processes) pinned to CPU {SERVER_CPUS}, wrk to CPU {LOAD_CPUS}. "
        + client_note()
        + "."
    )


RESULTS = ROOT / "bench" / "results"


def record(bench: str, title: str, command: str, table: str, notes: str = "", data: object = None) -> Path:
    """Keeps one run of a bench as data and shows it as the current table in docs/BENCHMARKS.md.

    The run is written to `bench/results/<bench>/<UTC stamp>.json` (date, machine, command, the
    table, the raw figures); the section `## <title>` of BENCHMARKS.md is replaced by this run's
    table (created when missing), so the page shows the latest figures and the history stays data.
    """
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%d %H:%M UTC")
    folder = RESULTS / bench
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    n = 1
    while path.exists():
        path, n = folder / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{n}.json", n + 1
    entry = {"bench": bench, "title": title, "date": stamp, "machine": machine(), "command": command,
             "table": table, "notes": notes, "data": data}  # fmt: skip
    path.write_text(json.dumps(entry, indent=2, default=str) + "\n")
    section = (
        f"## {title}\n\nLast run {stamp}. Machine: {machine()}. Command: `{command}`\n"
        f"History: `bench/results/{bench}/`.\n\n{table}\n" + (f"\n{notes}\n" if notes else "")
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: section + "\n", text, count=1)
        if pattern.search(text)
        else (text.rstrip("\n") + "\n\n" + section)
    )
    BENCHMARKS.write_text(text)
    return path


def machine() -> str:
    """The machine line of a bench's entry (BENCHMARKS.md; the soak's in RELIABILITY.md). It names
    the processor: guests of one size run the same code at different speeds, and the sampling
    bench's ratios differ between an AMD and an Intel guest."""
    uname = platform.uname()
    return f"{uname.system} {uname.release} {uname.machine}, {os.cpu_count()} CPUs ({cpu_model()})"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown processor"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def since(start: float) -> float:
    return time.perf_counter() - start


def fresh_files(out: Path) -> tuple[Path, Path, bytes]:
    """For the sampling benches: an empty `out` with the student (a 40-feature MLP and its card),
    and one request's body."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model, card = out / "mlp.onnx", out / "card.json"
    model.write_bytes(mlp_onnx_bytes(40, 10, hidden=64))
    card.write_text(
        json.dumps({"name": "bench-mlp", "input_name": "x", "output_name": "logits", "num_features": 40,
                    "classes": list(range(10))})
    )  # fmt: skip
    body = json.dumps({"inputs": np.random.default_rng(0).normal(size=(1, 40)).round(4).tolist()}).encode()
    return model, card, body


def stand_in_teacher(port: int, delay: float) -> list[str]:
    """The OIP v2 teacher the tests use, taking `delay` seconds per call."""
    return [str(VENV_BIN / "python"), str(ROOT / "tests" / "teachers" / "fake_teacher.py"),
            "--port", str(port), "--delay", str(delay)]  # fmt: skip
