"""Teacher calls in child processes: answers cross the process boundary; a killed child is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from distill_watchdog.config import TeacherConfig
from distill_watchdog.shadow.teachers import CallFailed, GuardedTeacher
from distill_watchdog.shadow.teachers.pool import ChildError, TeacherProcesses

from .fake_teacher import FakeTeacher
from support import eventually


def test_child_answers_fails_cleanly_and_survives_a_killed_process() -> None:
    with FakeTeacher(version="v3") as teacher:
        cfg = TeacherConfig(name="kid", kind="http-v2", location=teacher.url, retries=0, backoff_s=0.01,
                            options={"model_name": "big", "input_name": "x"})  # fmt: skip
        processes = TeacherProcesses([cfg], workers=1)
        guard = GuardedTeacher(cfg, lambda x: processes.call("kid", x))
        x = np.random.default_rng(1).normal(size=(3, 40)).astype(np.float32)

        async def scenario() -> None:
            await processes.start()
            answer = await guard.predict(x)
            assert answer.version == "v3"
            np.testing.assert_allclose(answer.probs, teacher.probs(x), atol=1e-5)
            teacher.mode = "garbage"
            with pytest.raises(CallFailed) as bad:
                await guard.predict(x)
            assert bad.value.outcome == "invalid"
            teacher.mode = "ok"
            for pid in processes.pids():
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(CallFailed) as dead:
                await guard.predict(x)
            assert dead.value.outcome == "error"
            assert (await processes.call("kid", x))[0] == "ok"  # a fresh process answers

        try:
            asyncio.run(scenario())
        finally:
            processes.close()


def test_a_call_its_caller_gave_up_on_keeps_its_child_unless_it_hangs() -> None:
    """An abandoned call (a timeout, or shutdown) that is answered later gives its child back; one
    that goes unanswered past `hang_s` costs that child, not the slot."""
    with FakeTeacher(version="v1", delay_s=1.0) as teacher:
        cfg = TeacherConfig(name="kid", kind="http-v2", location=teacher.url, timeout_s=30,
                            options={"model_name": "big", "input_name": "x"})  # fmt: skip
        processes = TeacherProcesses([cfg], workers=1, hang_s=2.0)
        x = np.ones((2, 40), dtype=np.float32)

        async def scenario() -> None:
            await processes.start()
            (first,) = processes.pids()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(processes.call("kid", x), 0.2)
            teacher.delay_s = 0.0
            assert (await asyncio.wait_for(processes.call("kid", x), 10))[0] == "ok"
            assert processes.pids() == [first]  # it answered within hang_s: same child

            teacher.delay_s = 8.0
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(processes.call("kid", x), 0.2)
            teacher.delay_s = 0.0
            assert (await asyncio.wait_for(processes.call("kid", x), 120))[0] == "ok"
            assert processes.pids() and first not in processes.pids()

        try:
            asyncio.run(scenario())
        finally:
            processes.close()


def test_teachers_that_cannot_load_fail_start_with_the_reason(tmp_path: Path) -> None:
    cfg = TeacherConfig(name="kid", kind="onnx", location=str(tmp_path / "t.onnx"), options={"no_such": 1})
    processes = TeacherProcesses([cfg], workers=2)
    with pytest.raises(ChildError, match="could not load the teachers"):
        asyncio.run(processes.start())
    assert processes.pids() == []


def test_close_leaves_no_teacher_process_behind() -> None:
    cfg = TeacherConfig(name="kid", kind="http-v2", location="http://127.0.0.1:9",
                        options={"model_name": "a"})  # fmt: skip
    processes = TeacherProcesses([cfg], workers=2)
    asyncio.run(processes.start())
    pids = processes.pids()
    assert len(pids) == 2
    processes.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_teacher_processes_die_with_a_killed_daemon(tmp_path) -> None:
    """kill -9 of the daemon (or the OOM killer) takes its teacher processes with it."""
    import subprocess
    import sys

    script = tmp_path / "owner.py"
    script.write_text(
        "import asyncio, os, signal\n"
        "from distill_watchdog.config import TeacherConfig\n"
        "from distill_watchdog.shadow.teachers.pool import ChildError, TeacherProcesses\n"
        "if __name__ == '__main__':  # the spawned children import this file too\n"
        "    cfg = TeacherConfig(name='kid', kind='http-v2', location='http://127.0.0.1:9',"
        " options={'model_name': 'a'})\n"
        "    p = TeacherProcesses([cfg], workers=2)\n"
        "    asyncio.run(p.start())\n"
        "    print(' '.join(map(str, p.pids())), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    owner = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert owner.returncode == -signal.SIGKILL
    pids = [int(p) for p in owner.stdout.split()]
    assert len(pids) == 2

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return status != "Z"

    try:
        eventually(lambda: not any(alive(pid) for pid in pids), timeout=10, what="teacher processes to end")
    finally:
        for pid in [pid for pid in pids if alive(pid)]:
            os.kill(pid, signal.SIGKILL)
