"""Teacher calls and sample inserts in child processes, spoken to over sockets the event loop reads.

Request encoding, response decoding, local models and SQL inserts never share the teacher
worker's GIL (nor load torch into its process: the shadow process, shadow/process.py). Each
child holds every configured teacher's adapter and answers one request at a time over its own
socket pair: length-prefixed pickles, written and read by the worker's event loop, with no
helper thread beside it. A child that dies is replaced (procs.Restarts); so is one that still has
not answered a call some time after its caller gave up, so that a hung local model cannot hold a
slot for ever. Start, framing and restarts are procs.py's, as for every child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill_watchdog.config import TeacherConfig
from distill_watchdog.procs import (
    START_TIMEOUT_S,
    Restarts,
    Spawned,
    answer,
    die_with,
    frame,
    receive,
    spawn,
)

Result = tuple[str, Any, Any]  # ("ok", probs, version) | ("fail", outcome, message)


class ChildError(RuntimeError):
    """A teacher process died, could not start, or raised where it should have answered."""


# --- the child ------------------------------------------------------------------------------

_adapters: dict[str, Any] = {}
_stores: dict[str, Any] = {}
_writer: ThreadPoolExecutor | None = None  # the child's insert thread (see _init)


def _init(configs: list[dict[str, Any]], parent: int, cpus: list[int] | None) -> None:
    from distill_watchdog.background import enter
    from distill_watchdog.shadow.teachers.adapters import build_adapter

    global _writer
    die_with(parent)
    # Inserts run on their own thread at nice 19: they hold the store's write lock, and a
    # near-zero CPU share would stretch that lock for every other writer.
    enter("low", cpus)
    _writer = ThreadPoolExecutor(1, thread_name_prefix="store")
    _writer.submit(int).result()  # its thread starts now, before this one drops to idle below
    # Teacher calls (encoding, decoding, local models) run at SCHED_IDLE. At nice 19 they still
    # held a CPU for a few ms after serving or the load's wake-up wanted it back (EEVDF does not
    # preempt at once for a low-weight task), which doubled serving's p99; an idle-policy task is
    # preempted on every wake-up. A saturated machine leaves them almost nothing, so the sample
    # buffer fills and rows are dropped and counted, never waited for.
    enter("idle", cpus)

    for data in configs:
        cfg = TeacherConfig(**data)
        _adapters[cfg.name] = build_adapter(cfg)


def _store_rows(url: str, parts: list[bytes]) -> str | None:
    """Bulk insert of pickled `SampleBatch`es on the child's insert thread (one engine per child);
    an error comes back as text."""
    assert _writer is not None, "runs only in a teacher process, after _init"
    return _writer.submit(_insert, url, [pickle.loads(part) for part in parts]).result()


def _insert(url: str, batches: list[Any]) -> str | None:
    from distill_watchdog.store import Store

    try:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = Store(url, create=False)
        store.add_sample_batches(batches)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


def _predict(name: str, x: np.ndarray) -> Result:
    from distill_watchdog.shadow.teachers.guard import classify

    try:
        out = _adapters[name].predict(x)
        return ("ok", np.asarray(out.probs, dtype=np.float32), str(out.version))
    except Exception as exc:  # every failure is an outcome for the parent to count
        return ("fail", classify(exc), f"{type(exc).__name__}: {exc}"[:300])


_OPS = {"predict": _predict, "store": _store_rows}


def _serve(sock: socket.socket, configs: list[dict[str, Any]], parent: int, cpus: list[int] | None) -> None:
    """The child's whole life: build the adapters, say so, then answer requests until EOF."""

    def start() -> Any:
        _init(configs, parent, cpus)
        return lambda request: _OPS[request[0]](*request[1])

    with contextlib.suppress(Exception):  # a failed start is sent to the daemon (procs.answer)
        answer(sock, start)


# --- the daemon's side ----------------------------------------------------------------------


@dataclass(eq=False)
class _Child(Spawned):
    alive: bool = True
    pending: asyncio.Future[Any] | None = None  # the answer being waited for
    overdue: asyncio.TimerHandle | None = None  # retires it unless it answers an abandoned call
    listener: asyncio.Task[None] | None = field(default=None, repr=False)


class TeacherProcesses:
    """`workers` child processes holding every configured teacher's adapter; one call each at a time."""

    def __init__(
        self,
        teachers: list[TeacherConfig],
        workers: int,
        cpus: list[int] | None = None,
        hang_s: float | None = None,
    ) -> None:
        self.workers = workers
        self.cpus = cpus
        # How long a child may go on with a call its caller gave up on (a timeout, or shutdown)
        # before it counts as hung: past every adapter's own timeout, a healthy child has answered.
        longest = max((t.timeout_s for t in teachers), default=10.0)
        self.hang_s = hang_s if hang_s is not None else longest + 1.0
        self._configs = [t.model_dump(mode="json") for t in teachers]
        self._children: list[_Child] = []
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._restarts = Restarts("teachers", self._spawn)

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.alive]

    async def start(self) -> None:
        """Starts every child and waits until its adapters are built (raises if they cannot be)."""
        started = await asyncio.gather(*(self._spawn() for _ in range(self.workers)), return_exceptions=True)
        failed = [s for s in started if isinstance(s, BaseException)]
        if failed:
            self.close()
            raise failed[0]

    async def call(self, name: str, x: np.ndarray) -> Result:
        return await self._run("predict", name, x)

    async def store_rows(self, url: str, parts: list[bytes]) -> None:
        """Stores `SampleBatch`es packed by `pack`."""
        error = await self._run("store", url, parts)
        if error is not None:
            raise RuntimeError(f"storing samples failed in a teacher process: {error}")

    async def _run(self, op: str, *args: Any) -> Any:
        message = frame((op, args))
        while True:
            if self._restarts.closed:
                raise ChildError("the teacher processes are closed")
            child = await self._idle.get()
            if child.alive:  # one that died while idle is skipped (it is being replaced)
                break
        answer = child.pending = asyncio.get_running_loop().create_future()
        try:
            child.writer.write(message)
        except Exception as exc:  # its socket is gone: the child is
            self._retire(child, f"cannot be written to ({type(exc).__name__})")
        try:
            status, value = await answer
        except asyncio.CancelledError:
            if child.pending is answer:  # the caller gave up; the child stays busy until it answers
                child.overdue = asyncio.get_running_loop().call_later(
                    self.hang_s, self._retire, child, f"did not answer within {self.hang_s:g} s"
                )
            raise
        if status != "ok":
            raise ChildError(f"teacher process {child.process.pid}: {value}")
        return value

    async def _spawn(self) -> _Child:
        started = await spawn(_serve, (self._configs, os.getpid(), self.cpus), "teacher")
        process = started.process
        child = _Child(process, started.sock, started.reader, started.writer)
        self._children.append(child)
        try:
            status, detail = await asyncio.wait_for(receive(child.reader), START_TIMEOUT_S)
        except (asyncio.IncompleteReadError, OSError, TimeoutError, asyncio.CancelledError) as exc:
            self._retire(child, "could not start", replace=False)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ChildError(f"a teacher process could not start (exit code {process.exitcode})") from None
        if status != "ready":
            self._retire(child, "could not start", replace=False)
            raise ChildError(f"a teacher process could not load the teachers: {detail}")
        child.listener = asyncio.get_running_loop().create_task(self._listen(child))
        self._idle.put_nowait(child)
        return child

    async def _listen(self, child: _Child) -> None:
        """Hands each answer to its caller and the child back to the idle queue; notices death."""
        try:
            while True:
                status, value = await receive(child.reader)
                if child.overdue is not None:
                    child.overdue.cancel()
                    child.overdue = None
                answer, child.pending = child.pending, None
                if answer is not None and not answer.done():
                    answer.set_result((status, value))
                self._idle.put_nowait(child)
        except asyncio.CancelledError:
            raise
        except Exception:  # EOF or a broken frame: the child is gone or unusable
            self._retire(child, f"exited (code {child.process.exitcode})")

    def _retire(self, child: _Child, why: str, replace: bool = True) -> None:
        """Fails its call in flight, ends the process, and (unless closing) starts a replacement."""
        if not child.alive:
            return
        child.alive = False
        if child.overdue is not None:
            child.overdue.cancel()
        if child in self._children:
            self._children.remove(child)
        answer, child.pending = child.pending, None
        if answer is not None and not answer.done():
            answer.set_exception(ChildError(f"teacher process {child.process.pid} {why}"))
        if child.listener is not None and child.listener is not asyncio.current_task():
            child.listener.cancel()
        _end(child)
        if replace:
            self._restarts.lost(f"teacher process {child.process.pid} {why}")

    def close(self) -> None:
        """Stops the children now (callable with or without a running event loop)."""
        self._restarts.close()
        children, self._children = self._children, []
        for child in children:
            child.alive = False
            if child.listener is not None:
                with contextlib.suppress(RuntimeError):
                    child.listener.cancel()
            _end(child)
        for child in children:
            child.process.join(timeout=5)


async def pack(batches: list[Any]) -> list[bytes]:
    """The batches pickled for `store_rows`, one per event-loop step: a flush's worth in one go
    (about 1,250 rows at 2,500 sampled rows/s) held the loop for half a millisecond or more."""
    parts = []
    for batch in batches:
        parts.append(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        await asyncio.sleep(0)
    return parts


def _end(child: _Child) -> None:
    """Closes the socket and kills the process; reaps it if it is gone already (else on close or
    at exit: multiprocessing reaps its children)."""
    with contextlib.suppress(OSError, RuntimeError):
        child.writer.close()
    with contextlib.suppress(OSError):
        child.sock.close()
    with contextlib.suppress(OSError, ValueError, AttributeError):
        child.process.kill()
    with contextlib.suppress(OSError, ValueError, AttributeError):
        child.process.join(timeout=0)
