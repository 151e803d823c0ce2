"""Guarded teacher calls against a real OIP v2 teacher on loopback: every failure has its outcome."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from distill_watchdog import metrics
from distill_watchdog.config import TeacherConfig
from distill_watchdog.shadow.teachers import CallFailed, CircuitBreaker, GuardedTeacher
from distill_watchdog.shadow.teachers.adapters import build_adapter
from distill_watchdog.shadow.teachers.guard import Result, classify

from .fake_teacher import FakeTeacher


def _count(teacher: str, outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "watchdog_teacher_requests_total", {"teacher": teacher, "outcome": outcome}
        )
        or 0.0
    )


def _guard(name: str, url: str, **kw: object) -> GuardedTeacher:
    cfg = TeacherConfig(
        name=name,
        kind="http-v2",
        location=url,
        timeout_s=kw.pop("timeout_s", 2.0),
        options={"model_name": "big", "input_name": "x"},
        backoff_s=0.01,
        **kw,
    )
    return _in_threads(cfg, build_adapter(cfg))


def _in_threads(cfg: TeacherConfig, adapter: Any) -> GuardedTeacher:
    """The adapter in a small thread pool of this process (the daemon runs it in a teacher process)."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"teacher-{cfg.name}")

    def run(x: np.ndarray) -> Result:
        try:
            out = adapter.predict(x)
            return ("ok", out.probs, str(out.version))
        except Exception as exc:  # the engine's TeacherError: every outcome is classified
            return ("fail", classify(exc), f"{type(exc).__name__}: {exc}"[:300])

    async def call(x: np.ndarray) -> Result:
        return await asyncio.get_running_loop().run_in_executor(pool, run, x)

    def close() -> None:
        pool.shutdown(wait=False, cancel_futures=True)
        adapter.close()

    return GuardedTeacher(cfg, call, close=close)


@pytest.fixture
def teacher():
    with FakeTeacher(version="v7") as t:
        yield t


def test_answer_carries_probabilities_and_version(teacher: FakeTeacher) -> None:
    guard = _guard("g-ok", teacher.url)
    x = np.random.default_rng(0).normal(size=(5, 40)).astype(np.float32)
    answer = asyncio.run(guard.predict(x))
    guard.close()
    assert answer.version == "v7"
    np.testing.assert_allclose(answer.probs, teacher.probs(x), atol=1e-5)
    assert _count("g-ok", "ok") == 1


@pytest.mark.parametrize(
    ("mode", "outcome"), [("garbage", "invalid"), ("nonjson", "invalid"), ("error", "error")]
)
def test_bad_answers_are_retried_then_counted(teacher: FakeTeacher, mode: str, outcome: str) -> None:
    teacher.mode = mode
    name = f"g-{mode}"
    guard = _guard(name, teacher.url, retries=2)
    with pytest.raises(CallFailed) as info:
        asyncio.run(guard.predict(np.zeros((2, 40), np.float32)))
    guard.close()
    assert info.value.outcome == outcome
    assert _count(name, outcome) == 3  # first try + two retries
    assert teacher.calls == 3


def test_slow_teacher_times_out(teacher: FakeTeacher) -> None:
    teacher.delay_s = 1.0
    guard = _guard("g-slow", teacher.url, timeout_s=0.1, retries=0)
    with pytest.raises(CallFailed) as info:
        asyncio.run(guard.predict(np.zeros((1, 40), np.float32)))
    guard.close()
    assert info.value.outcome == "timeout"
    assert _count("g-slow", "timeout") == 1


def test_circuit_opens_on_a_dead_teacher_and_closes_when_it_returns(teacher: FakeTeacher) -> None:
    teacher.stop()
    events: list[bool] = []
    guard = _guard("g-dead", teacher.url, retries=1, circuit_failures=2, circuit_reset_s=0.2)
    guard.on_circuit = lambda name, opened, error: events.append(opened)
    x = np.zeros((1, 40), np.float32)

    async def scenario() -> None:
        with pytest.raises(CallFailed) as first:
            await guard.predict(x)
        assert first.value.outcome == "error"
        with pytest.raises(CallFailed) as second:
            await guard.predict(x)
        assert second.value.outcome == "circuit_open"
        teacher.start()
        while not guard.breaker.allow():  # half-open after reset_s (bounded by the test timeout)
            await asyncio.sleep(0.05)
        guard.breaker._trial = False  # allow() above consumed the trial; hand it back
        answer = await guard.predict(x)
        assert answer.version == "v7"

    asyncio.run(scenario())
    guard.close()
    assert events == [True, False]
    assert _count("g-dead", "error") == 2
    assert _count("g-dead", "circuit_open") == 1
    assert metrics.REGISTRY.get_sample_value("watchdog_teacher_circuit_open", {"teacher": "g-dead"}) == 0


def test_breaker_half_open_allows_one_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=1, reset_s=10, clock=lambda: now[0])
    assert breaker.failure() is True
    assert not breaker.allow()
    now[0] = 10
    assert breaker.allow()
    assert not breaker.allow()  # only one trial while half-open
    assert breaker.failure() is False  # failed trial: open again, from now
    now[0] = 15
    assert not breaker.allow()
    now[0] = 20
    assert breaker.allow()
    assert breaker.success() is True
    assert breaker.allow()
