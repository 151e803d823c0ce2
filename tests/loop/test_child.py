"""The monitor's kind of child (procs.Worker): an error answer leaves the child; a crash or a hang
kills it, is counted, and the next call starts another."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest

from distill_watchdog.procs import ChildFailed, Worker, answer


def _fake(sock: socket.socket, start_fails: bool, parent: int) -> None:
    def handle(request: Any) -> dict[str, int]:
        if request == "crash":
            os._exit(3)
        if request == "hang":
            time.sleep(60)
        if request != "cycle":
            raise ValueError("bad op")
        return {"n": 1}

    def start() -> Any:
        if start_fails:
            raise RuntimeError("no store")
        return handle

    answer(sock, start)


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


def test_child_crash_and_timeout_are_counted_then_it_restarts() -> None:
    losses = _Count()

    async def scenario() -> None:
        worker = Worker("fake", _fake, (False,), "idle", None, losses)
        try:
            assert await worker.call("cycle", 60) == {"n": 1}
            first = worker.pid
            with open(f"/proc/{first}/comm") as fh:
                assert fh.read().strip() == "fake"  # its kind, as `ps` shows it
            with pytest.raises(ChildFailed, match="bad op"):
                await worker.call("other", 30)
            assert worker.pid == first and losses.value == 0  # an error answer keeps the child
            with pytest.raises(ChildFailed, match=r"exited \(code 3\)"):
                await worker.call("crash", 30)
            assert worker.child is None and losses.value == 1
            assert await worker.call("cycle", 60) == {"n": 1}
            second = worker.pid
            assert second != first
            with pytest.raises(TimeoutError):
                await worker.call("hang", 0.5)
            assert losses.value == 2
            with pytest.raises(ProcessLookupError):
                os.kill(second, 0)  # killed and reaped
            assert await worker.call("cycle", 60) == {"n": 1}
            assert worker.pid not in (first, second)
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_a_child_whose_set_up_fails_says_why_and_warm_leaves_it_for_the_next_call() -> None:
    losses = _Count()

    async def scenario() -> None:
        worker = Worker("fake", _fake, (True,), "idle", None, losses)
        await worker.warm(60)
        assert worker.child is None and losses.value == 0
        with pytest.raises(ChildFailed, match="could not start: RuntimeError: no store"):
            await worker.call("cycle", 60)
        assert worker.child is None and losses.value == 1

    asyncio.run(scenario())
