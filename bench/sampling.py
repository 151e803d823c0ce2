"""Shadow sampling's cost on serving: the daemon with sampling off vs `rate: 0.1` to a slow teacher.

Same run, same machine, same wrk load (concurrency 32, one row per request): the daemon as a
child process (`distill-watchdog serve`, SQLite store) with no teacher, and another sampling
10% of rows to an OIP v2 teacher (tests/teachers/fake_teacher.py, its own process) that takes
200 ms per call. Targets: throughput >= 95% of sampling-off, p99 <= 1.1x, zero failed requests.
Also reports what became of the sampled rows (stored vs dropped), and a control: the
sampling-off daemon with bench/background_load.py on the background CPU for the CPU share that
sampling's background work took (what any background work of that size costs serving on the
machine). A pair's daemons stay up for its rounds; the load comes in short bursts, interleaved
(off, on, control; then control, on, off; and so on: see `Bench`), and each round ends with a
burst to both daemons at once (`Bench.at_once`). The targets are judged on the median over
rounds of each round's ratio to its own 'off' burst, with a bootstrap interval: throughput as
the serving process's CPU per request in the bursts to both at once, p99 in the bursts to one
daemon at a time with wrk beside serving. On a 2-CPU machine those single-daemon bursts run in
two layouts, wrk beside serving and wrk beside the background work (see `layouts`). The rounds
are split between several pairs of daemons, each pair started afresh (`--pairs`): two daemons
of the same code and configuration have served up to 3% apart for their whole life (measured
when the wrks at once were real-time tasks; docs/sampling.md), so one pair alone could decide a
verdict within a few percent of the line.
Appends its table to docs/BENCHMARKS.md.

    .venv/bin/python bench/sampling.py [--seconds 2] [--rounds 30] [--pairs 3] [--no-append]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
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
    client_note,
    command_line,
    free_port,
    pinned,
    record,
    wake_interrupts,
    warm,
)

from distill_watchdog.config import SamplingConfig

OUT = ROOT / "bench" / "out" / "sampling"
OUTCOMES = ("stored", "dropped", "quarantined", "teacher_error")
AT_ONCE = "both daemons at once"  # see Bench.at_once
GAP_MARGIN_S = 0.3  # beyond gathering, the teacher call and the flush: the bulk write itself


def wrk(url: str, body: bytes, connections: int, seconds: int, cpus: list[int], shared: bool = False) -> Load:
    """wrk with this script's own Lua file and body (bench/out/post.lua is shared with other scripts)."""
    return common.wrk(url, body, connections, seconds, workdir=OUT, cpus=cpus, shared=shared)


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
    """User + system CPU of the process alone (all its threads, live or ended), without its
    children: Linux's CPU clock of another process, in nanoseconds (/proc's ticks are 10 ms,
    half a percent of a 2 s burst)."""
    return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


class StandInLoad:
    """Background work for 'control' bursts: bench/background_load.py at `share` of a CPU, on the
    background CPU at idle priority, stopped (SIGSTOP) outside those bursts."""

    def __init__(self, share: float) -> None:
        argv = ["chrt", "-i", "0", str(VENV_BIN / "python"), str(ROOT / "bench" / "background_load.py"),
                "--share", f"{share:.4f}", "--db", str(OUT / "load.db")]  # fmt: skip
        quiet = subprocess.DEVNULL
        self.proc = subprocess.Popen(pinned(argv, BACKGROUND_CPUS), stdout=quiet, stderr=quiet)
        self.pause()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


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
    """Where wrk runs for the bursts to one daemon: {layout: wrk's CPUs}. p99 is judged in the first.

    With 3 or more CPUs wrk has a CPU of its own. With 2 it must share one, and both choices are
    measured: beside the background work, the serving CPU sends an interrupt each time it wakes
    wrk, and background work on wrk's CPU makes those wake-ups more frequent, a cost a remote
    client would not bring; beside serving, wrk's wake-ups are local but wrk takes part of the
    serving CPU, which dilutes the req/s ratio, so throughput is read there as the serving
    process's CPU time per request (its capacity), not as req/s.
    """
    if not LOAD_CPUS:  # no pinning (BENCH_NO_PIN, or no taskset): one layout, the kernel's
        return {"unpinned": []}
    if BACKGROUND_CPUS != LOAD_CPUS or not serving_cpus:
        return {"client apart": LOAD_CPUS}
    return {"client beside serving": serving_cpus, "client beside background": LOAD_CPUS}


def add_fate(fate: dict[str, float], before: dict[str, float], after: dict[str, float]) -> None:
    """Adds what became of one 'on' daemon's sampled rows over its rounds."""
    for outcome in OUTCOMES:
        fate[outcome] += after[outcome] - before[outcome]


def by_pair(runs: dict[str, list[Run]], pair_of: list[int], pair: int) -> tuple[float, float, float]:
    """`ratios` over the rounds of one pair of daemons."""
    keep = [i for i, p in enumerate(pair_of) if p == pair]
    return ratios({mode: [rs[i] for i in keep] for mode, rs in runs.items()}, "on")


def order(round_: int) -> tuple[str, ...]:
    """The modes of one round: 'on' in the middle, 'off' first in even rounds and last in odd ones,
    so that a drift of the machine over the run (the host's other load, caches, the store's file
    system) favours neither mode."""
    modes = ("off", "on", "control")
    return modes if round_ % 2 == 0 else modes[::-1]


def ratios(runs: dict[str, list[Run]], mode: str) -> tuple[float, float, float]:
    """Median over rounds of (req/s, serving capacity, p99) against the same round's 'off' burst."""
    pairs = list(zip(runs[mode], runs["off"], strict=True))
    return (
        float(np.median([r.load.rps / o.load.rps for r, o in pairs])),
        float(np.median([o.serving_us / r.serving_us for r, o in pairs])),
        float(np.median([r.load.p99_ms / o.load.p99_ms for r, o in pairs])),
    )


def interval(
    runs: dict[str, list[Run]], mode: str, pair_of: list[int], draws: int = 2000
) -> tuple[tuple[float, float], ...]:
    """95% bootstrap intervals of the three medians `ratios` gives.

    Rounds of one pair of daemons are not independent of each other (a daemon's speed holds for
    its life), so each draw picks pairs with replacement, then rounds within each picked pair.
    """
    pairs = list(zip(runs[mode], runs["off"], strict=True))
    each = np.array(
        [
            [r.load.rps / o.load.rps, o.serving_us / r.serving_us, r.load.p99_ms / o.load.p99_ms]
            for r, o in pairs
        ]
    )
    groups = [np.flatnonzero(np.asarray(pair_of) == p) for p in sorted(set(pair_of))]
    rng = np.random.default_rng(0)
    medians = np.empty((draws, each.shape[1]))
    for d in range(draws):
        picked = [groups[g] for g in rng.integers(0, len(groups), size=len(groups))]
        rows = np.concatenate([rng.choice(g, size=len(g)) for g in picked])
        medians[d] = np.median(each[rows], axis=0)
    low, high = np.percentile(medians, [2.5, 97.5], axis=0)
    return tuple((float(lo), float(hi)) for lo, hi in zip(low, high, strict=True))


@dataclass
class Daemon:
    child: Child
    pid: int
    url: str  # /v1/predict


class Bench:
    """A pair's daemons stay up for all its rounds; each burst of load goes to one of them in turn.

    The host's other tenants change this guest's speed by up to half within seconds (a timed
    loop, 2026-12-05), so runs of 10 s each minutes apart compared different machines. Bursts of
    a few seconds, alternated, many times, compare each 'on' burst with an 'off' burst taken
    seconds before or after. The 'on' daemon's shadow work outlasts its burst (rows gather for
    `batch_wait_s`, the teacher answers, the write waits for `flush_s`): its CPU is counted
    until the gap after its burst ends, and no other burst runs in that gap. Every burst is
    followed by the same gap, whatever its mode: with the gap after 'on' bursts alone, each 'on'
    burst began the moment the burst before it ended and every other burst after a rest, a
    difference between the modes besides sampling that p99, set by a burst's worst moments,
    can feel (docs/sampling.md).
    """

    def __init__(self, args: argparse.Namespace, teacher: Child, stack: contextlib.ExitStack) -> None:
        self.args, self.teacher = args, teacher
        self.model, self.card, self.body = common.fresh_files(OUT)
        self.stack = stack
        self.pair = stack.enter_context(contextlib.ExitStack())  # the daemons of the current pair
        self.daemons: dict[str, Daemon] = {}
        self.load: StandInLoad | None = None  # started once sampling's background share is known
        self.shares: list[float] = []  # background CPU share (teacher processes + stand-in) per 'on' burst
        self.loads: list[float] = []  # the stand-in load's CPU share, as it ran, per 'control' burst
        cfg = SamplingConfig()  # the daemons' own defaults
        shadow_s = cfg.batch_wait_s + args.delay + cfg.flush_s + GAP_MARGIN_S
        self.gap = args.gap if args.gap is not None else shadow_s

    def new_pair(self, places: dict[str, list[int]]) -> None:
        """Stops the current daemons (if any) and starts and warms up a fresh 'off' and 'on' pair."""
        self.pair.close()
        self.daemons = {mode: self._start(mode) for mode in ("off", "on")}
        self.warm_up(places)

    def _start(self, mode: str) -> Daemon:
        port = free_port()
        config = daemon_config(mode, port, self.model, self.card, self.teacher.url)
        argv = [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)]
        child = self.pair.enter_context(Child(argv, port, ready="/v2/health/ready", cpus=DAEMON_CPUS))
        assert child.proc is not None
        return Daemon(child, child.proc.pid, child.url + "/v1/predict")

    def warm_up(self, places: dict[str, list[int]]) -> None:
        """Unmeasured: start-up transients, and (first pair) the share of a CPU the control's load
        should take."""
        for daemon in self.daemons.values():
            warm(daemon.url, self.body)
        measured = len(self.shares)
        for _ in range(2):
            for client in places.values():
                for mode in ("off", "on"):
                    self.burst(mode, client)
        if self.load is None:
            self.load = StandInLoad(float(np.median(self.shares[measured:])))
            self.stack.callback(self.load.close)  # killed with the daemons, even if the run fails
        del self.shares[measured:]

    def burst(self, mode: str, client: list[int]) -> Run:
        daemon = self.daemons["on" if mode == "on" else "off"]
        pid, load = daemon.pid, self.load if mode == "control" else None
        cpu0, own0 = cpu_seconds(pid), own_cpu_seconds(pid)
        peer0, ipi0 = cpu_seconds(self.teacher.proc.pid), wake_interrupts(client)
        if load:
            load.resume()
            load0 = own_cpu_seconds(load.proc.pid)
        start = time.monotonic()
        result = wrk(daemon.url, self.body, 32, self.args.seconds, client)
        took = time.monotonic() - start
        wakes = wake_interrupts(client) - ipi0
        if load:
            self.loads.append((own_cpu_seconds(load.proc.pid) - load0) / took)
            load.pause()
        time.sleep(self.gap)  # the 'on' daemon's shadow work; the same rest after every burst
        if mode == "on":
            children = cpu_seconds(pid) - cpu0 - (own_cpu_seconds(pid) - own0)
            peer = cpu_seconds(self.teacher.proc.pid) - peer0
            # All of it, the gap's included, as a share of the burst: the control's load runs
            # only during its own burst.
            self.shares.append((children + peer) / took)
        n = max(1, result.requests)
        cpu, own = cpu_seconds(pid) - cpu0, own_cpu_seconds(pid) - own0
        return Run(result, 1e6 * cpu / n, 1e6 * own / n, wakes / n)

    def at_once(self, client: list[int]) -> dict[str, Run]:
        """A burst to both daemons at the same time, each at concurrency 32 from its own wrk.

        Their serving processes share the serving CPU, so whatever the host does to this guest's
        speed meanwhile, it does to both: each daemon's serving CPU per request is compared with
        the other's measured over the same seconds. Both pay for sharing (the CPU switches
        between them, each refills its caches), so the figures per request are higher than
        with one daemon alone; the ratio is what this part measures. The two wrks share their CPU
        at nice -10, not as real-time tasks (common.SHARED_CLIENT_PRIORITY says why).
        """
        names = ("off", "on")
        pids = [self.daemons[n].pid for n in names]
        cpu0 = [(cpu_seconds(pid), own_cpu_seconds(pid)) for pid in pids]
        with ThreadPoolExecutor(len(names)) as pool:
            loads = list(
                pool.map(
                    lambda n: wrk(self.daemons[n].url, self.body, 32, self.args.seconds, client, True), names
                )
            )
        time.sleep(self.gap)  # the 'on' daemon's shadow work
        runs = {}
        for name, pid, (cpu, own), load in zip(names, pids, cpu0, loads, strict=True):
            n = max(1, load.requests)
            runs[name] = Run(
                load, 1e6 * (cpu_seconds(pid) - cpu) / n, 1e6 * (own_cpu_seconds(pid) - own) / n, 0.0
            )
        return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=2, help="length of each burst of load")
    parser.add_argument(
        "--rounds",
        type=int,
        default=30,
        help="off/on/control rounds of bursts, the order reversed every other round; judged on the median",
    )
    parser.add_argument(
        "--pairs", type=int, default=3, help="fresh 'off'/'on' daemon pairs the rounds are split between"
    )
    parser.add_argument("--delay", type=float, default=0.2, help="teacher seconds per call")
    parser.add_argument(
        "--gap",
        type=float,
        default=None,
        help="seconds after each burst (the 'on' daemon's shadow work finishes)",
    )
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.pairs <= args.rounds:
        raise SystemExit("error: --pairs must be between 1 and --rounds")

    OUT.mkdir(parents=True, exist_ok=True)
    teacher_port = free_port()
    load_before = os.getloadavg()[0]
    serving_cpus = sorted(set(os.sched_getaffinity(0)) - set(LOAD_CPUS) - set(BACKGROUND_CPUS))
    places = layouts(serving_cpus)
    judged = next(iter(places))
    runs = {place: {"off": [], "on": [], "control": []} for place in places}
    runs[AT_ONCE] = {"off": [], "on": []}
    pair_of: list[int] = []  # the pair of daemons each round ran on
    fate = dict.fromkeys(OUTCOMES, 0.0)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        # The teacher stands in for a remote service: it runs on the background CPU, off serving's.
        argv = common.stand_in_teacher(teacher_port, args.delay)
        teacher = stack.enter_context(Child(argv, teacher_port, cpus=BACKGROUND_CPUS))
        bench = Bench(args, teacher, stack)
        on_url, before = "", {}
        for round_ in range(args.rounds):
            pair = round_ * args.pairs // args.rounds
            if not pair_of or pair != pair_of[-1]:
                if pair_of:
                    add_fate(fate, before, drain(on_url))
                bench.new_pair(places)
                on_url = bench.daemons["on"].child.url
                before = samples(on_url)
            pair_of.append(pair)
            for place, client in places.items():
                for mode in order(round_):
                    run = bench.burst(mode, client)
                    runs[place][mode].append(run)
                    extra = f", stand-in load {bench.loads[-1]:.1%} of a CPU" if mode == "control" else ""
                    print(
                        f"round {round_} {place} {mode}: {run.load.rps:.0f} req/s, "
                        f"p99 {run.load.p99_ms:.2f} ms, failed {run.load.failed}, "
                        f"{run.cpu_us:.0f} us CPU/request "
                        f"({run.serving_us:.1f} serving), {run.wakes:.2f} IPIs to wrk's CPU/request{extra}",
                        flush=True,
                    )
            for mode, run in bench.at_once(LOAD_CPUS).items():
                runs[AT_ONCE][mode].append(run)
                print(
                    f"round {round_} {AT_ONCE} {mode}: {run.load.rps:.0f} req/s, "
                    f"p99 {run.load.p99_ms:.2f} ms, failed {run.load.failed}, "
                    f"{run.serving_us:.1f} us serving CPU/request",
                    flush=True,
                )
        add_fate(fate, before, drain(on_url))
        shares, loads = bench.shares, bench.loads
    minutes = (time.monotonic() - started) / 60

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
                f"| {'–' if place == AT_ONCE else f'{np.median([r.wakes for r in rs]):.2f}'} |"
            )
    # Throughput is judged on the daemons served at once (the host's noise cancels within each
    # burst); p99 on the bursts to one daemon at a time (what callers of one daemon wait), in the
    # first layout.
    _, capacity, _ = ratios(runs[AT_ONCE], "on")
    _, capacity_ci, _ = interval(runs[AT_ONCE], "on", pair_of)
    _, apart, p99 = ratios(runs[judged], "on")
    _, apart_ci, p99_ci = interval(runs[judged], "on", pair_of)
    each_pair = "; ".join(
        f"pair {p + 1}: capacity {by_pair(runs[AT_ONCE], pair_of, p)[1]:.3f}, "
        f"p99 {by_pair(runs[judged], pair_of, p)[2]:.3f}"
        for p in sorted(set(pair_of))
    )
    span = lambda ci: f"{ci[0]:.3f}–{ci[1]:.3f}"  # noqa: E731
    lines += [
        "",
        "| target (median of per-round ratios) | value | 95% interval | |",
        "|---|---|---|---|",
        f"| throughput ≥ 0.95 × off: serving capacity, {AT_ONCE} | {capacity:.3f} | {span(capacity_ci)} "
        f"| {verdict(capacity >= 0.95)} |",
        f"| (the same, one daemon at a time, {judged}: not judged) | {apart:.3f} | {span(apart_ci)} | |",
        f"| p99 ≤ 1.1 × off: one daemon at a time, {judged} | {p99:.3f} | {span(p99_ci)} "
        f"| {verdict(p99 <= 1.1)} |",
        f"| zero failed requests (all bursts) | {failed} | | {verdict(failed == 0)} |",
        "",
        "| sampled rows (all 'on' bursts) | count | share |",
        "|---|---|---|",
        *(f"| {o} | {fate[o]:,.0f} | {fate[o] / sampled:.1%} |" for o in OUTCOMES),
    ]
    spread = "; ".join(
        f"{place} {m}: {min(r.serving_us for r in rs):.1f}–{max(r.serving_us for r in rs):.1f} µs"
        for place, modes in runs.items()
        for m, rs in modes.items()
    )
    where = "; ".join(f"{place}: wrk on CPU {cpus}" for place, cpus in places.items())
    notes = (f"{args.rounds} rounds on {args.pairs} pairs of daemons, each pair started afresh and "
             f"warmed up, then given its share of the rounds ({each_pair}). Each round has "
             f"off/on/control bursts to one daemon at a time in each layout (the order reversed "
             f"every other round), then one burst to the 'off' and 'on' "
             f"daemons at once (a wrk -t1 -c32 each, on CPU {LOAD_CPUS}; their serving processes "
             f"share CPU {serving_cpus}): {args.seconds} s per burst, wrk -t1 -c32, one row per "
             f"request, {minutes:.0f} min in all. The daemons of a pair stay up for all its rounds (after "
             f"an unmeasured warm-up); after every burst no load runs for {bench.gap:.2f} s (the "
             f"'on' daemon's shadow work finishes, and that work counts toward its burst). Serving on CPU "
             f"{serving_cpus}; the stand-in teacher and the daemon's shadow work on CPU {BACKGROUND_CPUS} "
             f"(`server.background_cpus`, in every mode); {where}. Targets are judged on the median "
             f"over rounds of each round's ratio to its own 'off' burst, the interval a bootstrap "
             f"over pairs, then rounds within them: throughput on the bursts to both daemons at "
             f"once, where a change of the "
             f"guest's speed during a burst reaches both (bursts to one daemon at a time, seconds "
             f"apart, differ by up to 2x on a shared host); p99 on the bursts to one daemon at a time "
             f"({judged}), the latency callers of one daemon see. "
             f"CPU µs/request counts the daemon and its teacher processes, (serving) the serving process "
             f"alone; serving capacity vs off is the serving process's CPU per request off ÷ on (what "
             f"a serving CPU kept busy by remote clients would do), req/s vs off what wrk saw. "
             f"The control samples nothing: the 'off' daemon with bench/background_load.py (JSON and "
             f"SQLite work at idle priority, on CPU {BACKGROUND_CPUS}, running only during control "
             f"bursts) for the CPU time that sampling's background work took in the warm-up's 'on' "
             f"bursts (teacher processes and the stand-in teacher; median {share:.1%} in the measured "
             f"ones; the stand-in took a median {ran:.1%}): what background work of that size "
             f"costs serving on this machine, sampling or not. Wake-up IPIs: rescheduling and "
             f"function-call interrupts received by wrk's CPU (/proc/interrupts); beside background "
             f"work, nearly all are the serving CPU waking wrk, and the serving CPU pays for each "
             f"(docs/sampling.md). Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
             f"after. {client_note()}. Serving µs/request, lowest–highest burst: {spread}.")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    print(notes)
    if not args.no_append:
        record("sampling", "Shadow sampling cost", command_line(), table, notes)


if __name__ == "__main__":
    main()
