"""The waiting rows: bounded, first in first out, batches as columns; workers wake when rows arrive."""

from __future__ import annotations

import asyncio

import numpy as np

from distill_watchdog.sampling.waiting import WaitingRows


def _add(rows: WaitingRows, k: int) -> bool:
    x = np.full(3, k, dtype=np.float32)
    return rows.add(x, np.full(2, k / 10), f"r{k}", float(k), f"v{k % 2}", {"sensor": str(k)} if k else None)


def test_rows_come_out_oldest_first_as_columns_and_a_full_buffer_refuses() -> None:
    rows = WaitingRows(capacity=5)
    assert rows.take(3) is None
    assert all(_add(rows, k) for k in range(5))
    assert not _add(rows, 5) and len(rows) == 5  # full: refused, nothing replaced
    first = rows.take(3)
    assert first is not None and len(first) == 3
    np.testing.assert_array_equal(first.x[:, 0], [0, 1, 2])
    assert first.x.dtype == np.float32 and first.probs.shape == (3, 2)
    assert first.ids == ["r0", "r1", "r2"] and first.at == [0.0, 1.0, 2.0]
    assert first.versions == ["v0", "v1", "v0"] and first.given == [None, {"sensor": "1"}, {"sensor": "2"}]
    assert _add(rows, 6) and len(rows) == 3
    rest = rows.take(10)
    assert rest is not None and rest.ids == ["r3", "r4", "r6"] and len(rows) == 0


def test_a_waiting_worker_wakes_on_the_first_row_and_waits_again_once_drained() -> None:
    async def scenario() -> None:
        rows = WaitingRows(capacity=10)
        waiter = asyncio.create_task(rows.wait())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        _add(rows, 1)
        await asyncio.wait_for(waiter, 1)
        assert rows.take(5) is not None
        again = asyncio.create_task(rows.wait())
        await asyncio.sleep(0.01)
        assert not again.done()  # drained: the next wait blocks until a row comes
        again.cancel()

    asyncio.run(scenario())
