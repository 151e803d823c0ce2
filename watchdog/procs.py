"""Child processes of the daemon: how they start, how they are spoken to, how they are replaced.

Every child the daemon starts, by kind and user:

- Long-lived children speaking `frame`/`receive` (length-prefixed pickles over a socket pair),
  started with `spawn` (the spawn context: never fork a process that holds an event loop and
  threads) and ending with their parent (`die_with`):
  - the shadow process (shadow/process.py), replaced at once by `Restarts`;
  - the teacher processes (shadow/teachers/pool.py), replaced at once by `Restarts`;
  - the monitor's child (loop/monitor/process.py, driven by loop/scheduler.py): a `Worker`,
    one request, one answer (`answer` on its side), started on first use and again after a
    loss, killed when an answer is late.
- One-shot programs, each a step of a run (loop/runs.py: building the job, training, widening,
  gates): `run_step`, a real subprocess (`python -m ...`, `torchrun`, or a user's command) in
  its own process group, output to a log file, killed with its group at its timeout.

Each lost child is logged and counted the same way (`lost`). Every child runs on the background
CPUs at a lowered priority (background.py), applied by the daemon right after the start.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from distill_watchdog import background, metrics
from distill_watchdog.background import Priority

HEADER = struct.Struct("<Q")  # payload length, before each pickle
START_TIMEOUT_S = 180.0  # spawn, imports (torch for local teachers) and the child's own set-up
RESTART_DELAYS_S = (1.0, 5.0, 30.0)  # between attempts to replace a dead child (the last repeats)
# One thread per math library in children that compute (the monitor, the steps of a run): the
# CPUs they may use are the background CPUs, which other children share.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DO_NOT_TRACK": "1"}

log = logging.getLogger(__name__)


class ChildFailed(Exception):
    """A request/answer child answered with an error, could not start, or was lost."""


def frame(message: Any) -> bytes:
    """One message as written on a child's socket: its length, then its pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


async def receive(reader: asyncio.StreamReader) -> Any:
    """One message written by `frame`, read on an event loop."""
    head = await reader.readexactly(HEADER.size)
    return pickle.loads(await reader.readexactly(HEADER.unpack(head)[0]))


def read(stream: BinaryIO) -> Any:
    """One message written by `frame`, read by a child blocking on its socket; EOFError once the
    daemon closed its end (or died)."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError("the socket is closed")
    return pickle.loads(stream.read(HEADER.unpack(head)[0]))


def lost(what: str, why: str, counter: Any) -> None:
    """A child is gone (`why`): one more in `counter`, and an error logged."""
    counter.inc()
    log.error("%s: %s", what, why)


def die_with(parent: int) -> None:
    """Ask Linux to end this process when the daemon dies, even by SIGKILL or the OOM killer
    (a child busy with a slow call would otherwise see its socket close only after the call)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the daemon died before the request took effect
        os._exit(0)


def _named(name: str, target: Callable[..., None], *args: Any) -> None:
    """A spawned child's first step: its kind as its process name (`ps -o comm`), then `target`."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(15, name.encode()[:15])  # PR_SET_NAME
    target(*args)


@dataclass(eq=False)
class Spawned:
    """A started child process and the parent's end of its socket."""

    process: Any  # multiprocessing.Process
    sock: socket.socket
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def spawn(target: Callable[..., None], args: tuple[Any, ...], name: str) -> Spawned:
    """Starts `target(sock, *args)` in a new process named `name`; `sock` is the child's end of a
    socket pair."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = socket.socketpair()
    process = context.Process(target=_named, args=(name, target, theirs, *args), name=name, daemon=True)
    try:
        process.start()
    finally:
        theirs.close()
    reader, writer = await asyncio.open_connection(sock=mine)
    return Spawned(process, mine, reader, writer)


class Restarts:
    """The restart policy of a kind of long-lived child (`what`, for logs): each loss counted in
    `watchdog_sampler_errors_total{stage="worker"}` and a replacement started at once, retried
    after RESTART_DELAYS_S until it starts or the owner closes."""

    def __init__(self, what: str, start: Callable[[], Awaitable[Any]]) -> None:
        self.what = what
        self.start = start
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def lost(self, why: str, before: Callable[[], Awaitable[Any]] | None = None) -> None:
        """A child is gone (`why`): counted, logged, and a replacement started (after `before`)."""
        if self.closed:
            return
        lost(self.what, f"{why}; starting another", metrics.sampler_errors_total.labels(stage="worker"))
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


# --- request/answer children ------------------------------------------------------------------


def answer(sock: socket.socket, start: Callable[[], Callable[[Any], Any]]) -> None:
    """A request/answer child's side: `start()` (its set-up) returns the handler of one request;
    then ("ready", pid) is sent, and each request is answered ("ok", value) or ("raised", error)
    until the daemon closes the socket. A set-up that fails is sent as ("raised", error)."""
    try:
        handle = start()
    except BaseException as exc:
        sock.sendall(frame(("raised", f"{type(exc).__name__}: {exc}"[:500])))
        raise
    sock.sendall(frame(("ready", os.getpid())))
    stream = sock.makefile("rb")
    while True:
        try:
            request = read(stream)
        except EOFError:
            return
        try:
            reply = frame(("ok", handle(request)))
        except Exception as exc:  # an error costs one answer, not the child
            log.exception("a request failed")
            reply = frame(("raised", f"{type(exc).__name__}: {exc}"[:2000]))
        sock.sendall(reply)


class Worker:
    """A request/answer child (`answer` on its side), `target(sock, *args, parent_pid)`: started
    with the first call (or `warm`) on `cpus` at `priority`. A child that exits, breaks a frame or
    does not answer within the call's timeout is killed, counted in `losses` and replaced at the
    next call; an error it answers is raised as ChildFailed and the child stays."""

    def __init__(
        self,
        what: str,
        target: Callable[..., None],
        args: tuple[Any, ...],
        priority: Priority,
        cpus: Sequence[int] | None,
        losses: Any,
    ) -> None:
        self.what, self.target, self.args = what, target, args
        self.priority, self.cpus = priority, cpus
        self.losses = losses  # a prometheus counter (with its labels)
        self.child: Spawned | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self.child.process.pid if self.child is not None else None

    async def _start(self, timeout: float) -> Spawned:
        child = self.child = await spawn(self.target, (*self.args, os.getpid()), self.what)
        background.apply(child.process.pid, self.priority, self.cpus)
        status, detail = await asyncio.wait_for(receive(child.reader), timeout)
        if status != "ready":
            raise ChildFailed(f"the child could not start: {detail}")
        return child

    async def warm(self, timeout: float) -> None:
        """Starts the child ahead of the first call (its imports take seconds)."""
        async with self._lock:
            if self.child is None:
                try:
                    await self._start(timeout)
                except (TimeoutError, ChildFailed, asyncio.IncompleteReadError, OSError) as exc:
                    log.warning("%s did not start: %s", self.what, exc or type(exc).__name__)
                    await self.close()

    async def call(self, request: Any, timeout: float) -> Any:
        """The child's answer to `request`; TimeoutError past `timeout` (start included)."""
        async with self._lock:
            try:
                child = self.child or await self._start(timeout)
                child.writer.write(frame(request))
                await child.writer.drain()
                status, value = await asyncio.wait_for(receive(child.reader), timeout)
            except TimeoutError:
                await self._lose(f"no answer within {timeout:g} s; the child was killed")
                raise
            except (ChildFailed, asyncio.IncompleteReadError, OSError, pickle.UnpicklingError) as exc:
                why = str(exc) if isinstance(exc, ChildFailed) else None
                why = await self._lose(why)
                raise ChildFailed(why) from None
        if status != "ok":
            raise ChildFailed(str(value))
        return value

    async def _lose(self, why: str | None) -> str:
        """Kills the child and counts it lost; `why` (default: its exit code) is returned."""
        process = self.child.process if self.child is not None else None
        await self.close()
        if why is None:
            why = f"the child exited (code {process.exitcode if process is not None else None})"
        lost(self.what, f"{why}; another starts with the next call", self.losses)
        return why

    async def close(self) -> None:
        """Kills the child, if any, and reaps it."""
        child, self.child = self.child, None
        if child is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            child.writer.close()
        with contextlib.suppress(OSError, ValueError, AttributeError):
            child.process.kill()
        await asyncio.to_thread(child.process.join, 5)
        metrics.process_ended(child.process.pid)


# --- one-shot steps ---------------------------------------------------------------------------


async def run_step(
    argv: Sequence[str], log_path: Path, timeout: float, priority: Priority, cpus: Sequence[int] | None
) -> int:
    """Runs `argv` to its end in its own process group, in `log_path`'s folder, its output
    appended to `log_path`, on `cpus` at `priority`; returns its exit code. OSError if it cannot
    start; TimeoutError past `timeout`, and cancellation, kill the whole group first."""
    with open(log_path, "ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(log_path.parent),
            env={**os.environ, **CHILD_ENV},
            start_new_session=True,
        )
        background.apply(proc.pid, priority, cpus)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise


def write_settings(settings: Any, path: Path) -> Path:
    """The settings for the steps of a run (`--settings FILE`), readable by this user only: they
    hold the store URL, with its password (steps connect to the store); the admin token is left
    out."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older version may have been created 0644
    with os.fdopen(fd, "w") as fh:
        fh.write(settings.child_json())
    return path
