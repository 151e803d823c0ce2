"""`offer` keeps a sampled request as it is; the workers admit its rows. Every row is stored,
dropped and counted, or (sampling stopped or paused) let go before it was ever sampled."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill_watchdog.config import load_settings
from distill_watchdog.sampling import SamplingService

from .helpers import sample_count


@dataclass
class _Request:
    x: np.ndarray
    slice: dict[str, str] | None
    ids: list[str]


def _service(queue_size: int = 100) -> SamplingService:
    settings = load_settings(None, sampling={"rate": 1.0, "queue_size": queue_size})
    service = SamplingService(settings)
    service.running = True  # what start() sets; no worker runs here
    return service


def _offer(service: SamplingService, first: int, rows: int = 1) -> None:
    x = np.arange(first, first + rows, dtype=np.float64)[:, None].repeat(3, axis=1)
    ids = [f"r{first + i}" for i in range(rows)]
    service.offer(_Request(x, {"region": "eu"}, ids), np.full((rows, 2), 0.5, dtype=np.float32), "s1")


def test_offer_keeps_the_request_and_wakes_the_workers_admit_moves_its_rows_in_order() -> None:
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


def test_a_worker_waiting_for_rows_wakes_on_the_first_offer() -> None:
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
    service.admit()  # a worker notes the room a batch left
    _offer(service, 30, rows=2)
    assert sample_count("dropped") - before == 6 and service._kept == 2


def test_rows_offered_while_stopped_or_paused_are_let_go_uncounted(store_url: str) -> None:
    from distill_watchdog.store import Store
    from distill_watchdog.teachers import Pins

    service = _service()
    before = sample_count("dropped")
    service.pins = Pins(Store(store_url), "pause")
    service.pins.observe("big", "v1")
    service.pins.observe("big", "v2")  # a new version under policy `pause`
    assert service.pins.paused
    _offer(service, 0)
    service.admit()
    service.pins.accept("big", "v2")
    assert not service.pins.paused
    _offer(service, 1)
    service.running = False  # kept while running, admitted after sampling stopped
    service.admit()
    _offer(service, 2)
    assert not service._offered  # a stopped sampler keeps nothing
    assert len(service.waiting) == 0 and sample_count("dropped") == before


def test_stop_counts_rows_not_yet_admitted_as_dropped() -> None:
    service: Any = _service()
    before = sample_count("dropped")
    _offer(service, 0, rows=2)
    _offer(service, 2)
    service.admit(1)  # two rows waiting, one still offered
    asyncio.run(service.stop())
    assert sample_count("dropped") - before == 3


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
