"""Guarded teacher calls: a dead, slow or garbled teacher costs the worker time, never serving.

`call` is whatever runs the teacher (the daemon passes a call into the teacher's own process,
shadow/teachers/pool.py); this wraps it with a timeout, retries and a circuit breaker. Every attempt is
counted in `watchdog_teacher_requests_total{outcome}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from distill_watchdog import metrics
from distill_watchdog.config import TeacherConfig

log = logging.getLogger(__name__)

Result = tuple[str, Any, Any]  # ("ok", probs, version) | ("fail", outcome, message)
Call = Callable[[np.ndarray], Awaitable[Result]]


@dataclass(slots=True)
class TeacherAnswer:
    probs: np.ndarray
    version: str


class CallFailed(Exception):
    """The teacher gave no usable answer; `outcome` is the metric label."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def classify(exc: BaseException) -> str:
    """timeout | error (transport, HTTP status) | invalid (the answer could not be used)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, TimeoutError | httpx.TimeoutException) or isinstance(cause, httpx.TimeoutException):
        return "timeout"
    if isinstance(cause, httpx.HTTPError | OSError) or isinstance(exc, httpx.HTTPError | OSError):
        return "error"
    return "invalid"


class CircuitBreaker:
    """closed → open after `failures` failed calls in a row → half-open after `reset_s` (one trial)."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at >= self.reset_s and not self._trial:
            self._trial = True  # half-open: let exactly one call through
            return True
        return False

    def success(self) -> bool:
        """Records a success; True when this closed an open circuit."""
        was_open = self.opened_at is not None
        self.consecutive, self.opened_at, self._trial = 0, None, False
        return was_open

    def failure(self) -> bool:
        """Records a failure; True when this opened the circuit."""
        self.consecutive += 1
        if self.opened_at is not None:
            self.opened_at, self._trial = self.clock(), False  # failed trial: stay open
            return False
        if self.consecutive >= self.failures:
            self.opened_at = self.clock()
            return True
        return False


class GuardedTeacher:
    """Async `predict` with a hard timeout, bounded retries with doubling backoff and a breaker.

    `on_circuit(name, opened)` is called when the breaker opens or closes (alerting).
    """

    def __init__(
        self,
        cfg: TeacherConfig,
        call: Call,
        on_circuit: Callable[[str, bool, str], None] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.call = call
        self.breaker = CircuitBreaker(cfg.circuit_failures, cfg.circuit_reset_s)
        self.on_circuit = on_circuit
        self.last_error: str | None = None
        self._close = close
        self._latency = metrics.teacher_latency_seconds.labels(teacher=cfg.name)
        metrics.teacher_circuit_open.labels(teacher=cfg.name).set(0)

    def _count(self, outcome: str) -> None:
        metrics.teacher_requests_total.labels(teacher=self.name, outcome=outcome).inc()

    async def _attempt(self, x: np.ndarray) -> TeacherAnswer:
        begin = time.perf_counter()
        try:
            # The adapter's own timeout bounds network calls; this bounds local models and hangs.
            status, first, second = await asyncio.wait_for(self.call(x), self.cfg.timeout_s * 2 + 1)
        except TimeoutError:
            raise CallFailed(
                "timeout", f"teacher {self.name}: no answer in {self.cfg.timeout_s * 2 + 1:g} s"
            ) from None
        except Exception as exc:  # a broken pool or a dead child process
            raise CallFailed("error", f"teacher {self.name}: {type(exc).__name__}: {exc}"[:300]) from None
        finally:
            self._latency.observe(time.perf_counter() - begin)
        if status != "ok":
            raise CallFailed(first, second)
        probs = np.asarray(first, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[0] != len(x) or not np.isfinite(probs).all():
            raise CallFailed("invalid", f"teacher {self.name}: unusable probabilities of shape {probs.shape}")
        return TeacherAnswer(probs, str(second))

    async def predict(self, x: np.ndarray) -> TeacherAnswer:
        """An answer, or CallFailed after the retries (or at once while the circuit is open)."""
        delay = self.cfg.backoff_s
        failure: CallFailed | None = None
        for attempt in range(self.cfg.retries + 1):
            if not self.breaker.allow():
                self._count("circuit_open")
                raise CallFailed("circuit_open", f"teacher {self.name}: circuit open ({self.last_error})")
            try:
                answer = await self._attempt(x)
            except CallFailed as exc:
                self._count(exc.outcome)
                self.last_error = f"{exc.outcome}: {exc}"
                failure = exc
                if self.breaker.failure():
                    self._circuit(True)
                if attempt < self.cfg.retries and not self.breaker.is_open:
                    await asyncio.sleep(delay)
                    delay *= 2
                continue
            self._count("ok")
            if self.breaker.success():
                self._circuit(False)
            return answer
        assert failure is not None
        raise failure

    def _circuit(self, opened: bool) -> None:
        metrics.teacher_circuit_open.labels(teacher=self.name).set(1 if opened else 0)
        log.warning(
            "teacher %s: circuit %s (%s)", self.name, "opened" if opened else "closed", self.last_error
        )
        if self.on_circuit is not None:
            self.on_circuit(self.name, opened, self.last_error or "")

    def close(self) -> None:
        if self._close is not None:
            self._close()
