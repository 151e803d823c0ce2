"""The shadow process (the teacher worker off the serving process): its death, and its counters
on the daemon's /metrics. Its end with a killed daemon: reliability/test_crash_recovery.py."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from distill_watchdog.server import default_components

from .helpers import counter, daemon_settings, eventually, predict, sample_count, teacher_config
from support import ServerThread
from teachers.fake_teacher import FakeTeacher


@pytest.fixture
def teacher():
    with FakeTeacher(version="v1") as t:
        yield t


def test_a_killed_shadow_process_is_replaced_and_the_rows_it_held_are_counted_dropped(
    make_settings, model_files, teacher: FakeTeacher
) -> None:
    settings = daemon_settings(make_settings, model_files, [teacher_config(teacher.url, timeout_s=5.0)])
    with ServerThread(settings, default_components(settings)) as server:
        shadow = server.daemon.teachers.shadow
        store = server.daemon.store
        predict(server.url, rows=4)
        eventually(lambda: store.count_samples() == 4, what="rows stored through the first shadow process")
        eventually(lambda: sample_count("stored") >= 4, what="its counts on /metrics")
        stored = sample_count("stored")
        dropped, faults = sample_count("dropped"), counter("watchdog_sampler_errors_total", stage="worker")

        teacher.delay_s = 3.0  # the next rows are in the shadow process's hands when it dies
        predict(server.url, rows=3, seed=1)
        eventually(lambda: shadow._in_hand == 3, what="three rows waiting for the teacher")
        first = shadow.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for seed in range(2, 6):  # serving goes on meanwhile
            predict(server.url, rows=1, seed=seed)
        eventually(lambda: shadow.pid != first and shadow.running, what="a new shadow process")
        assert counter("watchdog_sampler_errors_total", stage="worker") == faults + 1
        assert sample_count("dropped") - dropped >= 3  # what it held, and rows sent while none ran
        assert sample_count("stored") >= stored  # the dead process's counts stay

        teacher.delay_s = 0.0
        predict(server.url, rows=2, seed=9)
        eventually(lambda: sample_count("stored") >= stored + 2, what="sampling through the new process")
        text = httpx.get(f"{server.url}/metrics").text
        assert text.count("watchdog_samples_total{") == 4  # one series per outcome, however many processes
