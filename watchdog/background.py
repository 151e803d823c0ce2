"""Where and at what priority the daemon's background processes run, so that serving keeps its latency.

All heavy work (monitor cycles, teacher calls and sample storage, every step of a run) happens
in child processes at a low CPU priority. Priority alone is not enough on a CPU that serving
also uses: an idle-priority process still keeps that CPU from ever going idle, and a busy CPU
wakes the serving threads more slowly than an idle one (on the 2-CPU benchmark machine a bare
`while True: pass` at SCHED_IDLE made serving's p99 1.5 to 2.4 times higher, docs/BENCHMARKS.md).
`server.background_cpus` therefore also keeps background processes on their own CPUs and the
serving process on the rest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Literal

from distill_watchdog.config import ServerConfig
from distill_watchdog.errors import ConfigError

Priority = Literal["idle", "low", "reduced"]
# idle: SCHED_IDLE, runs only on a CPU nothing else wants (monitor cycles, building a job,
#       teacher calls).
# low: nice 19 (the teacher processes' insert thread: it holds the store's write lock, and a
#      near-zero share would stretch that lock for every writer).
# reduced: nice 10 (training and gating: they must finish within their timeouts under load).
_NICE = {"idle": 19, "low": 19, "reduced": 10}


def split_cpus(background: Sequence[int] | None) -> tuple[set[int] | None, set[int] | None]:
    """(serving CPUs, background CPUs) for this process, or (None, None) when nothing is pinned.

    A negative entry counts from the end of the CPUs this process may use (-1: the last one),
    for containers whose CPU numbers are not known in advance (a Kubernetes static CPU policy).
    """
    if not background or not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = os.sched_getaffinity(0)
    ordered = sorted(allowed)
    if any(c < -len(ordered) for c in background):
        raise ConfigError(
            [
                f"server.background_cpus: this process may use {len(ordered)} CPUs; "
                f"{min(background)} is out of range"
            ]
        )
    wanted = {ordered[c] if c < 0 else c for c in background}
    missing = sorted(wanted - allowed)
    if missing:
        raise ConfigError(
            [
                f"server.background_cpus: CPU {', '.join(map(str, missing))} is not available to "
                f"this process (it may use {', '.join(map(str, sorted(allowed)))})"
            ]
        )
    serving = allowed - wanted
    if not serving:
        raise ConfigError(["server.background_cpus: leaves no CPU for serving; name fewer CPUs"])
    return serving, wanted


def resolve(server: ServerConfig) -> tuple[int, ...] | None:
    """`server.background_cpus` as CPU numbers of this (unpinned) process; None when unset."""
    _, background = split_cpus(server.background_cpus)
    return tuple(sorted(background)) if background is not None else None


def pin_serving(server: ServerConfig) -> tuple[int, ...] | None:
    """Pins the serving process to the CPUs background work does not use; returns the background
    CPUs as CPU numbers (None: nothing pinned).

    The daemon gives child processes these numbers, not the configured entries: relative ones
    would mean something else once serving is pinned. The settings are left as written.
    """
    serving, background = split_cpus(server.background_cpus)
    if serving is None or background is None:
        return None
    # Every thread: a CPU mask is per thread on Linux, and some start with the interpreter.
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), serving)
    return tuple(sorted(background))


def apply(pid: int, priority: Priority, cpus: Sequence[int] | None = None) -> None:
    """Moves process `pid` (0: this one) to its CPUs, then lowers its priority.

    The daemon applies it to each child it starts, right after the start, whatever the program
    (a step of a run, `torchrun`, a cluster launcher's command), rather than in a `preexec_fn`,
    which is unsafe in a process with threads.
    """
    if cpus:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(pid, set(cpus))
    if priority == "idle":
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, _NICE[priority])


def enter(priority: Priority, cpus: Sequence[int] | None = None) -> None:
    """`apply` to the calling process (a multiprocessing worker's initializer)."""
    apply(0, priority, cpus)
