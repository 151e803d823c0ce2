"""`offer` keeps a sampled request as it is; admission hands its rows to the sink (the shadow
process's worker; here, the waiting rows themselves). Every row is stored, dropped and counted,
or (sampling stopped or paused) let go before it was ever sampled."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill_watchdog.config import load_settings
from distill_watchdog.shadow import RequestSampler, TeacherWorker
from distill_watchdog.shadow.waiting import Rows, WaitingRows

from .helpers import sample_count


@dataclass
class _Request:
    x: np.ndarray
    slice: dict[str, str] | None
    ids: list[str]


def _service(queue_size: int = 100) -> RequestSampler:
    settings = load_settings(None, sampling={"rate": 1.0, "queue_size": queue_size})
    service = RequestSampler(settings, WaitingRows(queue_size))
    service.running = True  # what start() sets; no admission task runs here
    service.waiting = service.sink  # type: ignore[attr-defined]
    return service


def _offer(service: RequestSampler, first: int, rows: int = 1) -> None:
    x = np.arange(first, first + rows, dtype=np.float64)[:, None].repeat(3, axis=1)
    ids = [f"r{first + i}" for i in range(rows)]
    service.offer(_Request(x, {"region": "eu"}, ids), np.full((rows, 2), 0.5, dtype=np.float32), "s1")


def test_offer_keeps_the_request_and_wakes_admission_which_hands_its_rows_on_in_order() -> None:
    service = _service()
    assert not service._ready.is_set()
    _offer(service, 0)
    _offer(service, 1, rows=3)
    assert service._ready.is_set() and len(service.waiting) == 0  # nothing else on the request path
    service.admit(1)
    assert len(service.waiting) == 1
    service.admit()
    rows = service.waiting.take(10)
    assert rows is not None and rows.ids == ["r0", "r1", "r2", "r3"]
    np.testing.assert_array_equal(rows.x[:, 0], [0, 1, 2, 3])
    assert rows.versions == ["s1"] * 4 and rows.given == [{"region": "eu"}] * 4
    assert all(at > 0 for at in rows.at)


def test_admission_waiting_for_rows_wakes_on_the_first_offer() -> None:
    async def scenario() -> None:
        service = _service()
        waiter = asyncio.create_task(service._ready.wait())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        _offer(service, 0)
        await asyncio.wait_for(waiter, 1)

    asyncio.run(scenario())


def test_kept_and_waiting_rows_stay_within_the_queue_size_the_rest_dropped_and_counted() -> None:
    service = _service(queue_size=3)
    before = sample_count("dropped")
    for k in range(5):  # rows kept and waiting stay within queue_size; the rest are dropped at once
        _offer(service, k)
    assert sample_count("dropped") - before == 2
    _offer(service, 10, rows=2)  # still full
    assert sample_count("dropped") - before == 4
    service.admit()
    assert len(service.waiting) == 3 and service._kept == 0
    _offer(service, 20, rows=2)  # the waiting rows fill the buffer
    assert sample_count("dropped") - before == 6 and not service._offered
    service.waiting.take(2)
    service.admit()  # admission notes the room a batch left
    _offer(service, 30, rows=2)
    assert sample_count("dropped") - before == 6 and service._kept == 2


def test_rows_offered_while_stopped_are_let_go_uncounted() -> None:
    service = _service()
    before = sample_count("dropped")
    _offer(service, 1)
    service.running = False  # kept while running, admitted after sampling stopped
    service.admit()
    _offer(service, 2)
    assert not service._offered  # a stopped sampler keeps nothing
    assert len(service.sink) == 0 and sample_count("dropped") == before


def _rows(first: int, n: int = 1) -> Rows:
    x = np.arange(first, first + n, dtype=np.float64)[:, None].repeat(3, axis=1)
    at = [time.time()] * n
    return Rows(x, np.full((n, 2), 0.5, np.float32), [f"r{first + i}" for i in range(n)], at,
                ["s1"] * n, [None] * n)  # fmt: skip


def test_rows_offered_while_a_teacher_change_paused_sampling_are_let_go_uncounted(store_url: str) -> None:
    """Judged by when they were offered: rows reach the worker a moment later."""
    from distill_watchdog.shadow.teachers import Pins
    from distill_watchdog.store import Store

    settings = load_settings(None, sampling={"rate": 1.0, "on_teacher_change": "pause"})
    store = Store(store_url)
    worker = TeacherWorker(settings, store)
    worker.running = True  # what start() sets; no batch is taken here
    worker.pins = Pins(store, "pause", worker._on_pin_event)  # as start() wires it
    before = sample_count("dropped")
    worker.pins.observe("big", "v1")
    offered_before = _rows(0)
    time.sleep(0.01)
    worker.pins.observe("big", "v2")  # a new version under policy `pause`
    assert worker.pins.paused
    offered_while = _rows(1, 2)
    worker.receive(offered_before)  # arrives during the pause: sampled
    worker.receive(offered_while)
    assert len(worker.waiting) == 1
    time.sleep(0.01)
    worker.pins.accept("big", "v2")
    worker.receive(offered_while)  # arrives after the pause: still not sampled
    worker.receive(_rows(3, 2))
    rows = worker.waiting.take(10)
    assert rows is not None and rows.ids == ["r0", "r3", "r4"] and worker._ready.is_set()
    assert sample_count("dropped") == before


def test_rows_kept_at_stop_are_counted_as_dropped_by_the_sampler_and_waiting_ones_by_the_worker(
    store_url: str,
) -> None:
    from distill_watchdog.store import Store

    service: Any = _service()
    before = sample_count("dropped")
    _offer(service, 0, rows=2)
    _offer(service, 2)
    service.admit(1)  # two rows handed on, one still kept
    assert service.drop_kept() == 1 and not service._offered
    assert sample_count("dropped") - before == 1

    worker = TeacherWorker(load_settings(None, sampling={"rate": 1.0}), Store(store_url))
    worker.running = True
    worker.receive(_rows(0, 2))
    asyncio.run(worker.stop())
    assert sample_count("dropped") - before == 3 and len(worker.waiting) == 0


def test_some_rows_of_a_request_and_rows_of_another_width_are_admitted_request_by_request() -> None:
    service = _service()
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    request = _Request(x, None, ["a", "b", "c", "d"])
    service._offered.append((request, np.full((4, 2), 0.5, dtype=np.float32), [1, 3], "s1", 1.0))
    _offer(service, 0)
    service._offered.append((_Request(np.zeros((1, 5)), None, ["w"]), np.full((1, 2), 0.5), [0], "s2", 2.0))
    before = sample_count("dropped")
    service.admit()
    rows = service.waiting.take(10)
    assert rows is not None and rows.ids == ["b", "d", "r0"]  # the wider row waits for the old ones to go
    np.testing.assert_array_equal(rows.x[:2], x[[1, 3]])
    assert sample_count("dropped") - before == 1
