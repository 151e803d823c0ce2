"""Background processes run on `server.background_cpus` at a low priority; serving gets the other CPUs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill_watchdog import background
from distill_watchdog.config import TeacherConfig, load_settings
from distill_watchdog.errors import ConfigError
from distill_watchdog.jobs.child import ChildWorker, write_settings
from distill_watchdog.teachers.child import TeacherProcesses

from support import eventually

CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to split")


def test_cpus_that_are_not_available_or_leave_none_for_serving_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.background_cpus: CPU 4096 is not available"):
        background.split_cpus([4096])
    with pytest.raises(ConfigError, match="leaves no CPU for serving"):
        background.split_cpus(CPUS)
    assert background.split_cpus(None) == (None, None)


@needs_two
def test_serving_is_pinned_to_the_cpus_background_work_does_not_use() -> None:
    code = f"import os; from distill_watchdog.background import pin_serving; pin_serving([{CPUS[-1]}]); "
    code += "print(sorted(os.sched_getaffinity(0)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(CPUS[:-1])


def _state(pid: int) -> tuple[set[int], int, int]:
    return os.sched_getaffinity(pid), os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)


@needs_two
def test_teacher_processes_run_on_the_background_cpus_at_nice_19() -> None:
    cfg = TeacherConfig(
        name="kid", kind="http-v2", location="http://127.0.0.1:9", options={"model_name": "a"}
    )
    processes = TeacherProcesses([cfg], workers=2, cpus=[CPUS[-1]])
    try:
        asyncio.run(processes.start())
        pids = processes.pids()
        assert len(pids) == 2
        # One process may answer both start-up pings while the other is still initialising.
        eventually(lambda: all(_state(pid) == ({CPUS[-1]}, os.SCHED_OTHER, 19) for pid in pids), 30, "pinned")
    finally:
        processes.close()


@needs_two
def test_monitor_child_runs_on_the_background_cpus_at_idle_priority(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    worker = ChildWorker(
        "distill_watchdog.monitor.worker", write_settings(settings, tmp_path / "s.json"), "idle", [CPUS[-1]]
    )

    async def scenario() -> tuple[set[int], int, int]:
        await worker.warm(120)
        assert worker.proc is not None
        try:
            return _state(worker.proc.pid)
        finally:
            await worker.close()

    assert asyncio.run(scenario()) == ({CPUS[-1]}, os.SCHED_IDLE, 19)
