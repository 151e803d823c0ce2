"""Background processes run on `server.background_cpus` at a low priority; serving gets the other CPUs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill_watchdog import background, metrics, procs
from distill_watchdog.config import TeacherConfig, load_settings
from distill_watchdog.errors import ConfigError
from distill_watchdog.loop.monitor import process as monitor_process
from distill_watchdog.shadow.teachers.pool import TeacherProcesses

from support import DaemonProcess, eventually, free_port, wait_ready

CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to split")


def test_cpus_that_are_not_available_or_leave_none_for_serving_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.background_cpus: CPU 4096 is not available"):
        background.split_cpus([4096])
    with pytest.raises(ConfigError, match="leaves no CPU for serving"):
        background.split_cpus(CPUS)
    with pytest.raises(ConfigError, match=rf"may use {len(CPUS)} CPUs; -4096 is out of range"):
        background.split_cpus([-4096])
    assert background.split_cpus(None) == (None, None)


@needs_two
def test_a_negative_entry_counts_from_the_last_cpu_the_process_may_use() -> None:
    assert background.split_cpus([-1]) == (set(CPUS[:-1]), {CPUS[-1]})


@needs_two
def test_serving_is_pinned_to_the_cpus_background_work_does_not_use() -> None:
    code = "import os; from distill_watchdog.background import pin_serving; "
    code += "from distill_watchdog.config import ServerConfig; s = ServerConfig(background_cpus=[-1]); "
    code += "cpus = pin_serving(s); print(sorted(os.sched_getaffinity(0)), list(cpus), s.background_cpus)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Children are given CPU numbers; the settings keep the entry as written.
    assert out.strip() == f"{CPUS[:-1]} {[CPUS[-1]]} [-1]"


@needs_two
def test_the_daemon_holds_the_background_cpus_as_numbers_and_leaves_the_settings_as_written(
    tmp_path: Path,
) -> None:
    from distill_watchdog.app import create_app

    settings = load_settings(None, data_dir=str(tmp_path / "data"), server={"background_cpus": [-1]})
    assert create_app(settings).daemon.background_cpus == (CPUS[-1],)
    pinned = create_app(settings, background_cpus=(CPUS[0],)).daemon  # what pin_serving returned
    assert pinned.background_cpus == (CPUS[0],)
    assert settings.server.background_cpus == [-1]


def _state(pid: int) -> tuple[set[int], int, int]:
    return os.sched_getaffinity(pid), os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)


def _threads(pid: int) -> dict[int, tuple[set[int], int, int]]:
    return {int(tid): _state(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@needs_two
def test_teacher_processes_call_at_idle_priority_and_insert_at_nice_19() -> None:
    cfg = TeacherConfig(
        name="kid", kind="http-v2", location="http://127.0.0.1:9", options={"model_name": "a"}
    )
    processes = TeacherProcesses([cfg], workers=2, cpus=[CPUS[-1]])

    def settled(pid: int) -> bool:
        threads = _threads(pid)
        others = [state for tid, state in threads.items() if tid != pid]
        return threads[pid] == ({CPUS[-1]}, os.SCHED_IDLE, 19) and ({CPUS[-1]}, os.SCHED_OTHER, 19) in others

    try:
        asyncio.run(processes.start())
        pids = processes.pids()
        assert len(pids) == 2
        # One process may answer both start-up pings while the other is still initialising.
        eventually(lambda: all(settled(pid) for pid in pids), 30, "teacher calls idle, inserts at nice 19")
    finally:
        processes.close()


@needs_two
def test_monitor_child_runs_on_the_background_cpus_at_idle_priority(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    losses = metrics.scheduler_errors_total.labels(task="monitor")
    worker = procs.Worker(
        "monitor", monitor_process.main, (settings.child_json(),), "idle", [CPUS[-1]], losses
    )

    async def scenario() -> tuple[set[int], int, int]:
        await worker.warm(120)
        assert worker.pid is not None
        try:
            return _state(worker.pid)
        finally:
            await worker.close()

    assert asyncio.run(scenario()) == ({CPUS[-1]}, os.SCHED_IDLE, 19)


def test_serve_refuses_unusable_background_cpus_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "w.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nserver:\n  background_cpus: [4096]\n")
    cli = Path(sys.executable).parent / "distill-watchdog"
    out = subprocess.run(
        [str(cli), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"server.background_cpus: CPU 4096 is not available to this process (it may use "
        f"{', '.join(map(str, CPUS))})"
    ]


@needs_two
@pytest.mark.slow  # two uvicorn workers
def test_each_worker_pins_itself_to_the_serving_cpus(tmp_path: Path) -> None:
    """With `server.workers > 1` the supervisor stays unpinned; each worker resolves the same
    relative entry (-1) against every CPU and pins itself to the rest."""
    port = free_port()
    config = tmp_path / "w.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nserver:\n  port: {port}\n  workers: 2\n  background_cpus: [-1]\n"
    )
    daemon = DaemonProcess(config, port=port).start(wait=False)
    assert daemon.proc is not None
    serving = set(CPUS[:-1])

    def workers_pinned() -> bool:
        children = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children").read_text().split()
        return [os.sched_getaffinity(int(c)) for c in children].count(serving) == 2

    try:
        try:
            wait_ready(daemon.url, timeout=120, path="/v2/health/live")
        except TimeoutError:
            pytest.fail(f"the workers did not start:\n{daemon.log()[-3000:]}")
        eventually(workers_pinned, 30, "both workers on the serving CPUs")
        assert os.sched_getaffinity(daemon.proc.pid) == set(CPUS)  # the supervisor serves nothing
    finally:
        daemon.stop()
