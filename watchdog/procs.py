"""Child processes of the daemon: how they start, how they are spoken to, how they are replaced.

One message format: length-prefixed pickles over a socket pair, read on an event loop
(`frame`, `receive`). One start: `spawn` (the spawn context: never fork a process that holds an
event loop and threads), the child ending with its parent (`die_with`). One restart policy:
`Restarts` counts each loss in `watchdog_sampler_errors_total{stage="worker"}`, logs it, and
starts a replacement, retrying after RESTART_DELAYS_S until it starts or the owner closes.
Users: the teacher processes (shadow/teachers/pool.py) and the shadow process (shadow/process.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from distill_watchdog import metrics

HEADER = struct.Struct("<Q")  # payload length, before each pickle
START_TIMEOUT_S = 180.0  # spawn, imports (torch for local teachers) and the child's own set-up
RESTART_DELAYS_S = (1.0, 5.0, 30.0)  # between attempts to replace a dead child (the last repeats)

log = logging.getLogger(__name__)


def frame(message: Any) -> bytes:
    """One message as written on a child's socket: its length, then its pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


async def receive(reader: asyncio.StreamReader) -> Any:
    """One message written by `frame`, read on an event loop."""
    head = await reader.readexactly(HEADER.size)
    return pickle.loads(await reader.readexactly(HEADER.unpack(head)[0]))


def die_with(parent: int) -> None:
    """Ask Linux to end this process when the daemon dies, even by SIGKILL or the OOM killer
    (a child busy with a slow call would otherwise see its socket close only after the call)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the daemon died before the request took effect
        os._exit(0)


@dataclass(eq=False)
class Spawned:
    """A started child process and the parent's end of its socket."""

    process: Any  # multiprocessing.Process
    sock: socket.socket
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def spawn(target: Callable[..., None], args: tuple[Any, ...], name: str) -> Spawned:
    """Starts `target(sock, *args)` in a new process; `sock` is the child's end of a socket pair."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = socket.socketpair()
    process = context.Process(target=target, args=(theirs, *args), name=name, daemon=True)
    try:
        process.start()
    finally:
        theirs.close()
    reader, writer = await asyncio.open_connection(sock=mine)
    return Spawned(process, mine, reader, writer)


class Restarts:
    """The restart policy of a kind of child process (`what`, for logs)."""

    def __init__(self, what: str, start: Callable[[], Awaitable[Any]]) -> None:
        self.what = what
        self.start = start
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def lost(self, why: str, before: Callable[[], Awaitable[Any]] | None = None) -> None:
        """A child is gone (`why`): counted, logged, and a replacement started (after `before`)."""
        if self.closed:
            return
        metrics.sampler_errors_total.labels(stage="worker").inc()
        log.error("%s: %s; starting another", self.what, why)
        task = asyncio.get_running_loop().create_task(self._replace(before))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, before: Callable[[], Awaitable[Any]] | None) -> None:
        if before is not None:
            with contextlib.suppress(Exception):
                await before()
        for attempt in itertools.count():
            if self.closed:
                return
            try:
                await self.start()
                return
            except Exception as exc:
                delay = RESTART_DELAYS_S[min(attempt, len(RESTART_DELAYS_S) - 1)]
                log.error("%s: %s; trying again in %.0f s", self.what, exc, delay)
                await asyncio.sleep(delay)

    def close(self) -> None:
        """No more restarts; the pending ones are cancelled (with or without a running loop)."""
        self.closed = True
        for task in list(self._tasks):
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                task.cancel()
