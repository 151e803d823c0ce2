"""The monitor's child process: imports the heavy libraries once, then answers one cycle per request.

A `procs.Worker` of the scheduler's (procs.py): each request `"cycle"` gets the cycle's result,
or its error as text. It runs on the background CPUs at SCHED_IDLE, set by the daemon when it
starts this process, so that serving keeps its latency.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from distill_watchdog.procs import CHILD_ENV, answer, die_with


def main(sock: socket.socket, settings_json: str, parent: int) -> None:
    """The child's whole life (spawned): one thread per math library, then `answer` cycles."""
    os.environ.update(CHILD_ENV)  # before numpy and the rest are imported
    die_with(parent)
    answer(sock, lambda: _start(settings_json))


def _start(settings_json: str) -> Callable[[Any], dict[str, Any]]:
    from distill_watchdog.config import Settings
    from distill_watchdog.logs import setup_logging
    from distill_watchdog.loop.monitor import drift  # noqa: F401  (warm the imports before the first cycle)
    from distill_watchdog.loop.monitor.cycle import run_cycle
    from distill_watchdog.registry import Registry
    from distill_watchdog.store import Store

    settings = Settings.model_validate_json(settings_json)
    setup_logging(settings.server.log_format)
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)

    def cycle(request: Any) -> dict[str, Any]:
        if request != "cycle":
            raise ValueError(f"unknown request {request!r}")
        return run_cycle(settings, store, registry)

    return cycle
