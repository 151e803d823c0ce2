"""Dynamic micro-batching: concurrent requests share one ONNX Runtime run.

A request that finds the batcher free schedules a flush with `call_soon`; every request whose
task runs in the same event loop iteration (uvicorn starts all readable connections' tasks
together) joins it. While a run is in progress, new requests queue and the run's completion
flushes them (up to `max_batch_size` rows per run). When requests are still being parsed
(`arriving`), a flush may wait up to `max_batch_delay_ms` for them; a lone request never
waits. A model whose runs take under `inline_below_us` runs on the loop thread: the thread
hand-off (two wake-ups and a self-pipe write) would cost more than the run. Longer runs go to
a worker thread so the loop keeps parsing while ONNX Runtime works.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from distill_watchdog import metrics
from distill_watchdog.runtime import LoadedModel


class ModelUnavailableError(RuntimeError):
    """No student is loaded (start-up, or every load failed)."""


class NonFiniteInputError(ValueError):
    """The request holds a value that is NaN, infinite, or outside float32's range."""


class NonFiniteOutputError(ValueError):
    """Finite inputs can still overflow inside the model: these rows (of the request) came out
    NaN/inf, or (a card saying `probabilities` for a model that does not output them) outside [0, 1]."""

    def __init__(self, rows: list[int], check: str) -> None:
        super().__init__(f"the model's output is {check} for rows {rows}")
        self.rows = rows
        self.check = check


# (probabilities, predicted classes, model version) for one request's rows. The classes come
# from one argmax per batch: per request it was a numpy call and an array to serialise.
Prediction = tuple[np.ndarray, list[int], str]


@dataclass(slots=True)
class _Pending:
    x: np.ndarray
    future: asyncio.Future[Prediction]


class MicroBatcher:
    def __init__(
        self,
        current_model: Callable[[], LoadedModel | None],
        max_batch_size: int,
        max_batch_delay_ms: float,
        inline_below_us: float = 0.0,
        requests_in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        self.requests_in_flight = requests_in_flight
        self._current_model = current_model
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_batch_delay_ms / 1000.0
        self.inline_below_s = inline_below_us / 1e6
        self._run_estimate: tuple[str, float] = ("", float("inf"))  # (version, EWMA seconds per run)
        self.arriving = 0  # requests between their first byte and the queue (set by the routes)
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0  # kept, not summed: the flush reads it on every call
        # Requests in the last run: more than one means requests arrive together, and the first
        # of each loop iteration would run alone (it cannot see the tasks started after it).
        self._last_requests = 1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-run")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._delay_timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # while waiting for stragglers: when the wait ends
        self._running = False  # a batch is on the worker thread
        self._ran_alone_this_iteration = False
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Finishes what is queued and running, then stops."""
        while self._queue or self._running:
            self._schedule_flush()
            self._idle.clear()
            await self._idle.wait()
        self._executor.shutdown(wait=True)

    def submit(self, x: np.ndarray) -> asyncio.Future[Prediction]:
        """A future of `x`'s probabilities, their argmax and the version that produced them.

        A future rather than a coroutine: the hot route awaits it with one frame less per request.
        """
        model = self._current_model()
        if model is None:
            raise ModelUnavailableError("no student model is loaded")
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Prediction] = loop.create_future()
        if (
            not self._queue
            and not self._running
            and not self._ran_alone_this_iteration
            and self._last_requests == 1
            and self.requests_in_flight() <= 1
            and self._estimate(model) < self.inline_below_s
        ):
            # The only request on an idle server that served one at a time so far, tiny model:
            # run here, no queue, no wait. Requests whose tasks start in this same loop
            # iteration (uvicorn starts every readable connection's task together) queue behind
            # it and share the next run; once they do, the first of each iteration queues too.
            self._ran_alone_this_iteration = True
            loop.call_soon(self._new_iteration)
            if not _fits_float32(x):
                future.set_exception(NonFiniteInputError())
                return future
            probs, wall, cost = model.timed_proba(x if x.dtype == np.float32 else x.astype(np.float32))
            self._record(model, len(x), wall, cost)
            if _all_finite(probs):
                future.set_result((probs, probs.argmax(axis=1).tolist(), model.version))
            else:
                future.set_exception(_non_finite(probs))
            return future
        self._queue.append(_Pending(x, future))
        self._queued_rows += len(x)
        if not self._running:
            if self._delay_timer is not None and self.arriving == 0:
                self._delay_timer.cancel()  # everyone it waited for is here
                self._delay_timer = None
            self._schedule_flush()
        return future

    def _new_iteration(self) -> None:
        self._ran_alone_this_iteration = False

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._delay_timer is None:
            self._flush_scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)

    def _estimate(self, model: LoadedModel) -> float:
        version, seconds = self._run_estimate
        return seconds if version == model.version else model.single_row_seconds

    def _record(self, model: LoadedModel, rows: int, wall: float, cost: float) -> None:
        self._run_estimate = (model.version, 0.8 * self._estimate(model) + 0.2 * cost)
        metrics.inference_seconds.observe(wall)
        metrics.batch_size.observe(rows)

    def _take_batch(self) -> list[_Pending]:
        queue = self._queue
        batch = [queue.popleft()]
        rows = len(batch[0].x)
        while queue and rows + len(queue[0].x) <= self.max_batch_size:
            item = queue.popleft()
            batch.append(item)
            rows += len(item.x)
        self._queued_rows -= rows
        return [p for p in batch if not p.future.done()]  # callers that went away are skipped

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._delay_timer = None
        if self._running:
            return
        if not self._queue:
            self._deadline = 0.0
            self._idle.set()
            return
        loop = self._loop or asyncio.get_running_loop()
        if self.max_delay_s > 0 and self.arriving > 0 and self._queued_rows < self.max_batch_size:
            now = loop.time()
            if not self._deadline:
                self._deadline = now + self.max_delay_s
            if now < self._deadline:  # requests are still being parsed: give them until the deadline
                self._delay_timer = loop.call_at(self._deadline, self._flush)
                return
        self._deadline = 0.0
        batch = self._take_batch()
        self._last_requests = len(batch)
        if not batch:
            self._schedule_flush()
            return
        model = self._current_model()
        if model is None:
            for p in batch:
                p.future.set_exception(ModelUnavailableError("no student model is loaded"))
            self._schedule_flush()
            return
        x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
        if not _fits_float32(x):  # one check for the whole batch; request by request only if it fails
            batch = _refuse_out_of_range(batch)
            if not batch:
                self._schedule_flush()
                return
            x = np.concatenate([p.x for p in batch])
        if x.dtype != np.float32:
            x = x.astype(np.float32)  # one cast for the whole batch (requests arrive as parsed)
        if self._estimate(model) < self.inline_below_s:
            try:
                probs, wall, cost = model.timed_proba(x)
            except Exception as exc:
                self._fail(batch, exc)
            else:
                self._record(model, len(x), wall, cost)
                self._deliver(batch, model, probs)
            self._schedule_flush()
            return
        self._running = True
        work = self._executor.submit(model.timed_proba, x)
        work.add_done_callback(lambda done: loop.call_soon_threadsafe(self._finished, batch, model, done))

    def _finished(
        self, batch: list[_Pending], model: LoadedModel, work: Future[tuple[np.ndarray, float, float]]
    ) -> None:
        self._running = False
        exc = work.exception()
        if exc is not None:
            self._fail(batch, exc)
        else:
            probs, wall, cost = work.result()
            self._record(model, len(probs), wall, cost)
            self._deliver(batch, model, probs)
        self._schedule_flush()

    def _deliver(self, batch: list[_Pending], model: LoadedModel, probs: np.ndarray) -> None:
        finite = _all_finite(probs)  # once per batch; row by row only if it fails
        labels = probs.argmax(axis=1).tolist()
        start = 0
        for p in batch:
            end = start + len(p.x)
            if not p.future.done():
                part = probs[start:end]
                if finite or _all_finite(part):
                    p.future.set_result((part, labels[start:end], model.version))
                else:
                    p.future.set_exception(_non_finite(part))
            start = end

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_MAX_SQUARED = _FLOAT32_MAX**2


def _fits_float32(x: np.ndarray) -> bool:
    """Every value finite and within float32's range (integers always are).

    One dot product clears the usual batch at once (NaN or inf make it NaN or inf); only a
    batch with large values is looked at value by value.
    """
    if x.dtype.kind != "f":
        return True
    return float(np.vdot(x, x)) <= _FLOAT32_MAX_SQUARED or float(np.abs(x).max()) <= _FLOAT32_MAX


def _refuse_out_of_range(batch: list[_Pending]) -> list[_Pending]:
    """Fails the requests holding a value float32 cannot carry; returns the others."""
    kept = []
    for p in batch:
        if _fits_float32(p.x):
            kept.append(p)
        else:
            p.future.set_exception(NonFiniteInputError())
    return kept


def _all_finite(probs: np.ndarray) -> bool:
    """Probabilities lie in [0, 1], so their sum of squares is finite exactly when every one is.

    One BLAS call: a third of what `np.isfinite(probs).all()` costs on a micro-batch.
    """
    return math.isfinite(np.vdot(probs, probs))


NOT_FINITE = "not finite (NaN or infinity: inputs far outside the model's range?)"
NOT_PROBABILITIES = "outside [0, 1] (not probabilities: does the card's output_kind match the model?)"


def _non_finite(probs: np.ndarray) -> NonFiniteOutputError:
    """The rows that failed `_all_finite`, and which check: a value NaN or infinite, else (the
    sum of squares overflowed on finite values) a value outside [0, 1]."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        return NonFiniteOutputError(np.flatnonzero(bad)[:5].tolist(), NOT_FINITE)
    bad = ((probs < 0) | (probs > 1)).any(axis=1)
    return NonFiniteOutputError(np.flatnonzero(bad)[:5].tolist(), NOT_PROBABILITIES)
