"""The shadow process: the teacher worker (worker.py) in a process of its own.

Batching, teacher calls, pinning and writes would each wake the serving process's event loop;
here the serving process only sends admitted rows, a chunk at a time, and reads a few small
messages back.

One socket pair, length-prefixed pickles (procs.py, as for every child process):

- serving -> shadow: `("rows", Rows)`, `("call", id, method, args, kwargs)` (accept,
  reevaluate), `("stop",)`.
- shadow -> serving: `("ready", pid, running)`, `("taken", rows, in_hand)` (rows that left its
  waiting rows, and taken rows not yet settled), `("metrics", samples)` (metrics.SHADOW),
  `("state", states, status)`, `("alert", method, args, kwargs)`, `("reply", id, ok, value)`,
  `("stopped",)`.

A shadow process that dies is replaced; the rows it held are counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable
from typing import Any

from distill_watchdog import metrics
from distill_watchdog.config import Settings
from distill_watchdog.errors import WatchdogError
from distill_watchdog.procs import START_TIMEOUT_S, Restarts, die_with, frame, receive, spawn
from distill_watchdog.shadow.waiting import Rows

log = logging.getLogger(__name__)

PUSH_S = 0.25  # how often the shadow process sends its metrics and teacher states when they changed
CALLS = frozenset({"accept", "reevaluate"})  # the worker's methods the daemon may call
STOP_TIMEOUT_S = 40.0  # shutdown: its last writes (worker.STOP_WRITE_TIMEOUT_S) and its last messages


# --- the shadow process ---------------------------------------------------------------------------


class _Alerts:
    """The serving process's alerter, as seen from here: each call becomes a message."""

    def __init__(self, send: Callable[[Any], None], cfg: Any) -> None:
        self.send, self.cfg = send, cfg

    def fire(self, *args: Any, **kwargs: Any) -> None:
        self.send(("alert", "fire", args, kwargs))

    def resolve(self, *args: Any, **kwargs: Any) -> None:
        self.send(("alert", "resolve", args, kwargs))

    def reconcile(self, *args: Any, **kwargs: Any) -> None:
        self.send(("alert", "reconcile", args, kwargs))


def _main(
    sock: socket.socket,
    settings_json: str,
    feature_names: list[str] | None,
    alerts: bool,
    parent: int,
    cpus: tuple[int, ...] | None,
) -> None:
    """The process's whole life (spawned): logging as the daemon's, then `_run`. `cpus`: the
    daemon's background CPUs as CPU numbers (this process and its teacher processes run there)."""
    from distill_watchdog.logs import setup_logging

    # The teacher processes are this one's children: a daemonic process may not start any. It
    # still ends with the daemon (`die_with`), and the daemon ends it on shutdown.
    multiprocessing.current_process().daemon = False
    settings = Settings.model_validate_json(settings_json)
    setup_logging(settings.server.log_format)
    die_with(parent)
    from distill_watchdog.background import enter

    enter("low", cpus)
    asyncio.run(_run(sock, settings, feature_names, alerts, cpus))


async def _run(
    sock: socket.socket,
    settings: Settings,
    feature_names: list[str] | None,
    alerts: bool,
    cpus: tuple[int, ...] | None,
) -> None:
    from distill_watchdog.store import Store

    reader, writer = await asyncio.open_connection(sock=sock)
    store = await asyncio.to_thread(Store, settings.store_url, False)
    shadow = _Shadow(writer, settings, store, feature_names, alerts, cpus)
    try:
        await shadow.worker.start()
    except Exception as exc:
        log.exception("sampling: the shadow process could not start the teacher worker")
        shadow.send(("ready", os.getpid(), False, f"{type(exc).__name__}: {exc}"[:300]))
        await writer.drain()
        return
    shadow.push_all()  # the teachers' states are known when the daemon says it is ready
    shadow.send(("ready", os.getpid(), shadow.worker.running, ""))
    await shadow.serve(reader)


class _Shadow:
    """The shadow process's end of the socket: rows and calls in, states and metrics out."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        settings: Settings,
        store: Any,
        feature_names: list[str] | None,
        alerts: bool,
        cpus: tuple[int, ...] | None,
    ) -> None:
        from distill_watchdog.shadow.pipeline import TeacherWorker

        self.writer = writer
        self.received = 0
        self.pushed: dict[str, Any] = {}
        alerter = _Alerts(self.send, settings.alerts) if alerts else None
        self.worker = TeacherWorker(settings, store, alerter, feature_names, self.taken, self.push_all, cpus)

    def send(self, message: Any) -> None:
        self.writer.write(frame(message))

    def push(self, kind: str, *value: Any) -> None:
        """Sends what changed since it was last sent."""
        if self.pushed.get(kind) != value:
            self.pushed[kind] = value
            self.send((kind, *value))

    def taken(self) -> None:
        self.push("taken", self.received - len(self.worker.waiting), self.worker.in_hand)

    def push_all(self) -> None:
        self.push("metrics", metrics.shadow_snapshot())
        self.push("state", self.worker.states(), self.worker.status())
        self.taken()

    async def push_forever(self) -> None:
        while True:
            await asyncio.sleep(PUSH_S)
            self.push_all()

    async def answer(self, call_id: int, method: str, args: tuple, kwargs: dict) -> None:
        try:
            if method not in CALLS:
                raise ValueError(f"not a worker call: {method!r}")
            value = await getattr(self.worker, method)(*args, **kwargs)
            reply = ("reply", call_id, True, value)
        except WatchdogError as exc:  # the caller's error (an unknown teacher, no candidate): 4xx
            reply = ("reply", call_id, False, exc)
        except Exception as exc:
            reply = ("reply", call_id, False, f"{type(exc).__name__}: {exc}"[:500])
        self.push_all()  # the state the answer describes arrives before the answer
        self.send(reply)

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Reads the daemon's messages until it says stop or goes away, then stops the worker."""
        loop = asyncio.get_running_loop()
        pusher = loop.create_task(self.push_forever())
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    message = await receive(reader)
                except (asyncio.IncompleteReadError, OSError):
                    return  # the daemon is gone (its death also ends this process: die_with)
                if message[0] == "rows":
                    rows: Rows = message[1]
                    self.received += len(rows)
                    self.worker.receive(rows)
                    self.taken()
                elif message[0] == "call":
                    task = loop.create_task(self.answer(*message[1:]))
                    calls.add(task)
                    task.add_done_callback(calls.discard)
                elif message[0] == "stop":
                    break
        finally:
            pusher.cancel()
            for task in calls:
                task.cancel()
            await self.worker.stop()
            with contextlib.suppress(Exception):
                self.push_all()
                self.send(("stopped",))
                await self.writer.drain()
                self.writer.close()


# --- the serving process's side -------------------------------------------------------------------


class ShadowProcess:
    """Starts the shadow process, sends it rows (a `Sink` for offer.RequestSampler), calls its
    worker's methods, and keeps what it last said of its teachers."""

    def __init__(
        self,
        settings: Settings,
        feature_names: list[str] | None,
        alerter: Any,
        cpus: tuple[int, ...] | None = None,
    ) -> None:
        self.settings = settings
        self.feature_names = feature_names
        self.alerter = alerter  # alerts.Alerter, or None
        self.cpus = cpus  # the daemon's background CPUs (CPU numbers), where the process runs
        self.running = False  # its teacher worker runs (teachers loaded)
        self.states: dict[str, Any] = {}  # teacher name -> pinning.TeacherState, as last sent
        self.teacher_status: list[dict[str, Any]] = []
        self.pid: int | None = None
        self._process: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._listener: asyncio.Task[None] | None = None
        self._restarts = Restarts("sampling", self._start_again)
        self._sent = 0  # rows sent to this shadow process
        self._taken = 0  # of those, rows that left its waiting rows
        self._in_hand = 0  # rows it took and has not yet settled (stored, dropped, ...)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False

    # --- the sink --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._sent - self._taken

    def extend(self, rows: Rows) -> int:
        """Sends the rows; 0 (none taken) while no shadow process runs its worker."""
        if self._writer is None or not self.running:
            return 0
        self._writer.write(frame(("rows", rows)))
        self._sent += len(rows)
        return len(rows)

    # --- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the process and waits for its worker (raises if the process cannot start)."""
        args = (
            self.settings.child_json(),
            self.feature_names,
            self.alerter is not None,
            os.getpid(),
            self.cpus,
        )
        started = await spawn(_main, args, "shadow")
        process, reader, writer = started.process, started.reader, started.writer
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while (message := await receive(reader))[0] != "ready":
                    self._dispatch(message)
        except (asyncio.IncompleteReadError, OSError, TimeoutError) as exc:
            writer.close()
            process.kill()
            raise RuntimeError(f"the shadow process could not start (exit code {process.exitcode})") from exc
        _, pid, running, error = message
        if error:
            writer.close()
            process.join(timeout=5)
            raise RuntimeError(f"the shadow process could not start its teacher worker: {error}")
        self._process, self._writer, self.pid, self.running = process, writer, pid, running
        self._sent = self._taken = self._in_hand = 0
        self._listener = asyncio.get_running_loop().create_task(self._listen(reader))

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        try:
            while self._dispatch(await receive(reader)):
                pass
        except asyncio.CancelledError:
            raise
        except Exception:  # EOF or a broken frame: the process is gone
            self._lost()

    def _dispatch(self, message: Any) -> bool:
        """Applies one message from the shadow process; False after its last one."""
        kind = message[0]
        if kind == "taken":
            self._taken, self._in_hand = message[1], message[2]
        elif kind == "metrics":
            metrics.remote.update(id(self), message[1])
        elif kind == "state":
            self.states, self.teacher_status = message[1], message[2]
        elif kind == "alert" and self.alerter is not None:
            getattr(self.alerter, message[1])(*message[2], **message[3])
        elif kind == "reply":
            answer = self._calls.pop(message[1], None)
            if answer is not None and not answer.done():
                if message[2]:
                    answer.set_result(message[3])
                elif isinstance(message[3], BaseException):
                    answer.set_exception(message[3])
                else:
                    answer.set_exception(RuntimeError(f"in the shadow process: {message[3]}"))
        elif kind == "stopped":
            metrics.remote.end(id(self))  # its counts stay; a later process starts from zero
            metrics.process_ended(self.pid)
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)
            return False
        return True

    def _lost(self) -> None:
        """The shadow process died: what it held is dropped and counted; another is started."""
        lost = len(self) + self._in_hand
        self._writer = None
        self.running = False
        metrics.remote.end(id(self))
        metrics.process_ended(self.pid)
        for answer in self._calls.values():
            if not answer.done():
                answer.set_exception(RuntimeError("the shadow process exited"))
        self._calls.clear()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if self._closing:
            return
        if lost:
            metrics.samples_total.labels(outcome="dropped").inc(lost)
        self._sent = self._taken = self._in_hand = 0
        code = self._process.exitcode if self._process is not None else None
        process = self._process
        self._restarts.lost(
            f"the shadow process exited (code {code}); {lost} rows lost",
            before=lambda: asyncio.to_thread(process.join, 5),
        )

    async def _start_again(self) -> None:
        await self.start()
        log.info("sampling: a new shadow process (pid %s) took over", self.pid)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Runs `await worker.<method>(...)` in the shadow process; its error raises RuntimeError."""
        if self._writer is None:
            raise RuntimeError("the shadow process is not running (it is being replaced)")
        call_id = next(self._ids)
        answer = self._calls[call_id] = asyncio.get_running_loop().create_future()
        self._writer.write(frame(("call", call_id, method, args, kwargs)))
        return await answer

    async def stop(self) -> None:
        """Asks the worker to write what it answered and count what it did not, waits for its last
        metrics, then ends the process."""
        self._closing = True
        self._restarts.close()
        if self._writer is not None and self._listener is not None:
            self._stopped = asyncio.get_running_loop().create_future()
            with contextlib.suppress(Exception):
                self._writer.write(frame(("stop",)))
                await asyncio.wait_for(asyncio.shield(self._stopped), STOP_TIMEOUT_S)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._writer = None
        self.running = False
        if self._process is not None:
            await asyncio.to_thread(self._process.join, 5)
            if self._process.is_alive():
                self._process.kill()
                await asyncio.to_thread(self._process.join, 5)
