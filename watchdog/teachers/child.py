"""Teacher calls in child processes: request encoding, response decoding and local models never
share the serving process's GIL (nor load torch into it).

The engine's adapters run in a small `spawn` process pool, built once per child by the
initializer; every call returns a plain tuple (exceptions are classified in the child, where
their causes are still attached).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ..config import TeacherConfig

Result = tuple[str, Any, Any]  # ("ok", probs, version) | ("fail", outcome, message)

_adapters: dict[str, Any] = {}


def _init(configs: list[dict[str, Any]]) -> None:
    from .adapters import build_adapter

    for data in configs:
        cfg = TeacherConfig(**data)
        _adapters[cfg.name] = build_adapter(cfg)


def _ping() -> int:
    return os.getpid()


def _predict(name: str, x: np.ndarray) -> Result:
    from .guard import classify

    try:
        out = _adapters[name].predict(x)
        return ("ok", np.asarray(out.probs, dtype=np.float32), str(out.version))
    except Exception as exc:  # every failure is an outcome for the parent to count
        return ("fail", classify(exc), f"{type(exc).__name__}: {exc}"[:300])


class TeacherProcesses:
    """`workers` child processes holding every configured teacher's adapter."""

    def __init__(self, teachers: list[TeacherConfig], workers: int) -> None:
        self.workers = workers
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=([t.model_dump(mode="json") for t in teachers],),
        )

    async def start(self) -> None:
        """Starts every child and waits until its adapters are built (raises if they cannot be)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, _ping) for _ in range(self.workers)))

    async def call(self, name: str, x: np.ndarray) -> Result:
        return await asyncio.get_running_loop().run_in_executor(self.pool, _predict, name, x)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
