"""A long-lived child process answering JSON lines: heavy imports once, work off the serving process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from distill_watchdog import background
from distill_watchdog.background import Priority

log = logging.getLogger(__name__)

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DO_NOT_TRACK": "1"}


class ChildFailed(Exception):
    pass


class ChildWorker:
    """Starts `python -m <module> --settings FILE` on first use; restarts it after a crash or timeout."""

    def __init__(
        self, module: str, settings_file: Path, priority: Priority = "idle", cpus: list[int] | None = None
    ) -> None:
        self.module = module
        self.settings_file = settings_file
        self.priority, self.cpus = priority, cpus
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _start(self, timeout: float) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            "--settings",
            str(self.settings_file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the child's logs go to the daemon's stderr
            env={**os.environ, **CHILD_ENV},
            limit=64 * 1024 * 1024,
        )
        background.apply(proc.pid, self.priority, self.cpus)
        self.proc = proc
        await self._read(timeout)  # the "ready" line
        return proc

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise ChildFailed(f"{self.module} exited (code {await self.proc.wait()})")
        return json.loads(line)

    async def warm(self, timeout: float) -> None:
        """Starts the child ahead of the first call (its imports take seconds)."""
        async with self._lock:
            if self.proc is None or self.proc.returncode is not None:
                try:
                    await self._start(timeout)
                except (TimeoutError, ChildFailed, ValueError) as exc:
                    log.warning("child %s did not start: %s", self.module, exc)
                    await self.close()

    async def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        async with self._lock:
            try:
                if self.proc is None or self.proc.returncode is not None:
                    await self._start(timeout)
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                await self.proc.stdin.drain()
                answer = await self._read(timeout)
            except TimeoutError:
                await self.close()
                raise
            except (ChildFailed, ConnectionError, BrokenPipeError, ValueError) as exc:
                await self.close()
                raise ChildFailed(str(exc)) from None
        if not answer.get("ok"):
            raise ChildFailed(str(answer.get("error")))
        return answer.get("result") or {}

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()


def write_settings(settings: Any, path: Path) -> Path:
    """The settings for children, readable by this user only: they hold the store URL, with its
    password (children connect to the store); the admin token is left out."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older version may have been created 0644
    with os.fdopen(fd, "w") as fh:
        fh.write(settings.child_json())
    return path
