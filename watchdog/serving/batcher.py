"""Dynamic micro-batching: concurrent requests share one ONNX Runtime run, off the event loop.

While one run is in progress, new requests queue; the next run takes all of them (up to
`max_batch_size` rows). When requests are still being parsed (`arriving`), the batcher may
wait up to `max_batch_delay_ms` for them; a lone request never waits. Runs happen on a
worker thread, except on an idle server for a model whose runs take under
`inline_below_us`: there the thread hand-off would cost more than the run and nobody waits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import metrics
from ..runtime import LoadedModel


class ModelUnavailableError(RuntimeError):
    """No student is loaded (start-up, or every load failed)."""


@dataclass(slots=True)
class _Pending:
    x: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, str]]


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
        self.arriving = 0
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-run")
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # a batch is being run by the loop below
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_forever(), name="micro-batcher")

    async def stop(self) -> None:
        """Finishes what is queued, then stops."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def predict(self, x: np.ndarray) -> tuple[np.ndarray, str]:
        """Probabilities for `x` and the version that produced them."""
        model = self._current_model()
        if model is not None and self._fast(model):
            await asyncio.sleep(0)  # let requests that arrived with this one show up first
        if (
            model is not None
            and not self._busy
            and self._idle()
            and self.requests_in_flight() <= 1
            and self._fast(model)
        ):
            # The only request on an idle server, tiny model: run here, without the queue and
            # two loop round trips.
            started = time.perf_counter()
            probs = model.predict_proba(x)
            self._record(model, len(x), time.perf_counter() - started)
            return probs, model.version
        future: asyncio.Future[tuple[np.ndarray, str]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(x, future))
        self._wakeup.set()
        return await future

    def _idle(self) -> bool:
        return not self._queue and self.arriving == 0

    def _fast(self, model: LoadedModel) -> bool:
        return self._estimate(model) < self.inline_below_s

    def _record(self, model: LoadedModel, rows: int, elapsed: float) -> None:
        self._run_estimate = (model.version, 0.8 * self._estimate(model) + 0.2 * elapsed)
        metrics.inference_seconds.observe(elapsed)
        metrics.batch_size.observe(rows)

    def _estimate(self, model: LoadedModel) -> float:
        version, seconds = self._run_estimate
        return seconds if version == model.version else model.single_row_seconds

    async def _gather_stragglers(self, rows: int) -> None:
        deadline = time.monotonic() + self.max_delay_s
        while rows < self.max_batch_size and self.arriving > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            rows = sum(len(p.x) for p in self._queue)

    def _take_batch(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = len(batch[0].x)
        while self._queue and rows + len(self._queue[0].x) <= self.max_batch_size:
            item = self._queue.popleft()
            batch.append(item)
            rows += len(item.x)
        return batch

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_delay_s > 0 and self.arriving > 0:
                await self._gather_stragglers(sum(len(p.x) for p in self._queue))
            batch = [p for p in self._take_batch() if not p.future.done()]
            if not batch:
                continue
            model = self._current_model()
            if model is None:
                for p in batch:
                    p.future.set_exception(ModelUnavailableError("no student model is loaded"))
                continue
            x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
            started = time.perf_counter()
            self._busy = True
            try:
                if self._idle() and self._fast(model):
                    probs = model.predict_proba(x)  # nobody is waiting on the loop: skip the hand-off
                else:
                    probs = await loop.run_in_executor(self._executor, model.predict_proba, x)
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            self._record(model, len(x), time.perf_counter() - started)
            start = 0
            for p in batch:
                end = start + len(p.x)
                if not p.future.done():
                    p.future.set_result((probs[start:end], model.version))
                start = end
