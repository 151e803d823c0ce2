"""The monitor's child process: a crash or a hang is reported to the caller and the child restarts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from distill_watchdog.loop.child import ChildFailed, ChildWorker


def test_child_crash_and_timeout_are_reported_then_it_restarts(tmp_path: Path) -> None:
    settings = tmp_path / "s.json"
    settings.write_text("{}")
    module = tmp_path / "fake_worker.py"
    module.write_text(
        "import json, sys, time\n"
        "print(json.dumps({'ok': True, 'ready': True}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    op = json.loads(line)['op']\n"
        "    if op == 'crash': sys.exit(3)\n"
        "    if op == 'hang': time.sleep(60)\n"
        "    print(json.dumps({'ok': op == 'cycle', 'result': {'n': 1}, 'error': 'bad op'}), flush=True)\n"
    )
    sys.path.insert(0, str(tmp_path))

    async def scenario() -> None:
        worker = ChildWorker("fake_worker", settings)
        try:
            assert await worker.call({"op": "cycle"}, 30) == {"n": 1}
            first = worker.proc
            with pytest.raises(ChildFailed, match="bad op"):
                await worker.call({"op": "other"}, 30)
            with pytest.raises(ChildFailed, match="exited"):
                await worker.call({"op": "crash"}, 30)
            with pytest.raises(TimeoutError):
                await worker.call({"op": "hang"}, 0.5)
            assert await worker.call({"op": "cycle"}, 30) == {"n": 1}
            assert worker.proc is not first  # restarted after the crash and the hang
        finally:
            await worker.close()

    import os

    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env_path}"
    try:
        asyncio.run(scenario())
    finally:
        os.environ["PYTHONPATH"] = env_path
        sys.path.remove(str(tmp_path))
