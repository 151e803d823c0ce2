"""Teacher calls in child processes: request encoding, response decoding and local models never
share the serving process's GIL (nor load torch into it).

The engine's adapters run in a small `spawn` process pool, built once per child by the
initializer; every call returns a plain tuple (exceptions are classified in the child, where
their causes are still attached).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np

from ..config import TeacherConfig

T = TypeVar("T")
Result = tuple[str, Any, Any]  # ("ok", probs, version) | ("fail", outcome, message)

log = logging.getLogger(__name__)
_adapters: dict[str, Any] = {}
_stores: dict[str, Any] = {}
_writer: ThreadPoolExecutor | None = None  # the child's insert thread (see _init)


def _die_with(parent: int) -> None:
    """Ask Linux to end this process when the daemon dies, even by SIGKILL or the OOM killer.

    A pool worker holds its call queue's write end too, so it never sees EOF: without this,
    every crash of the daemon left its teacher processes waiting forever.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the daemon died before the request took effect
        os._exit(0)


def _init(configs: list[dict[str, Any]], parent: int, cpus: list[int] | None) -> None:
    from ..background import enter
    from .adapters import build_adapter

    global _writer
    _die_with(parent)
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


def _ping() -> int:
    return os.getpid()


def _store_rows(url: str, batches: list[Any]) -> str | None:
    """Bulk insert of `SampleBatch`es on the child's insert thread (one engine per child); an error
    comes back as text."""
    assert _writer is not None, "runs only in a pool process, after _init"
    return _writer.submit(_insert, url, batches).result()


def _insert(url: str, batches: list[Any]) -> str | None:
    from ..store import Store

    try:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = Store(url, create=False)
        store.add_sample_batches(batches)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


def _predict(name: str, x: np.ndarray) -> Result:
    from .guard import classify

    try:
        out = _adapters[name].predict(x)
        return ("ok", np.asarray(out.probs, dtype=np.float32), str(out.version))
    except Exception as exc:  # every failure is an outcome for the parent to count
        return ("fail", classify(exc), f"{type(exc).__name__}: {exc}"[:300])


class TeacherProcesses:
    """`workers` child processes holding every configured teacher's adapter."""

    def __init__(self, teachers: list[TeacherConfig], workers: int, cpus: list[int] | None = None) -> None:
        self.workers = workers
        self.cpus = cpus
        self._configs = [t.model_dump(mode="json") for t in teachers]
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")  # never fork a process with an event loop and threads
        return ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            initializer=_init,
            initargs=(self._configs, os.getpid(), self.cpus),
        )

    def pids(self) -> list[int]:
        return list(getattr(self.pool, "_processes", {}) or {})

    async def start(self) -> None:
        """Starts every child and waits until its adapters are built (raises if they cannot be)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, _ping) for _ in range(self.workers)))

    async def call(self, name: str, x: np.ndarray) -> Result:
        return await self._run(_predict, name, x)

    async def store_rows(self, url: str, batches: list[Any]) -> None:
        error = await self._run(_store_rows, url, batches)
        if error is not None:
            raise RuntimeError(f"storing samples failed in a teacher process: {error}")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """A child that died breaks the pool: a fresh one replaces it for the next call."""
        pool = self.pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self.pool is pool:
                log.warning("teachers: a teacher process died; starting new ones")
                self.pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    def close(self) -> None:
        """Stops the children now. `shutdown(wait=False)` alone can leave them waiting forever on
        their call queue when this process exits right after (they hold its write end too)."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=5)
