"""The waiting rows: bounded, first in first out, batches as columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill_watchdog.shadow.waiting import Rows, WaitingRows


def _add_row(
    rows: WaitingRows, x: np.ndarray, probs: np.ndarray, row_id: str, at: float, version: str, given: Any
) -> bool:
    """One row ([D] or [1, D] each); whether it was kept."""
    one = Rows(x.reshape(1, -1), probs.reshape(1, -1), [row_id], [at], [version], [given])
    return rows.extend(one) == 1


def _add(rows: WaitingRows, k: int) -> bool:
    x = np.full((1, 3), k, dtype=np.float64)  # as parsed: a one-row request's own array
    given = {"sensor": str(k)} if k else None
    return _add_row(rows, x, np.full((1, 2), k / 10), f"r{k}", float(k), f"v{k % 2}", given)


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


def test_rows_keep_their_order_and_values_through_wrap_around_and_growth() -> None:
    """Random adds and takes against a plain list: rows of both dtypes and layouts keep their order
    and values while the buffers fill, refuse, and drain."""
    rng = np.random.default_rng(3)
    rows = WaitingRows(capacity=700)
    expected: list[int] = []
    k = fullest = 0
    for _ in range(400):
        for _ in range(int(rng.integers(0, 15))):
            one_row = bool(rng.integers(0, 2))  # a one-row request's own array, or a row of a bigger one
            x = np.full((1, 3), k, dtype=np.float64) if one_row else np.full((4, 3), k, dtype=np.int64)[2]
            kept = _add_row(rows, x, np.full((1, 2), k, dtype=np.float32), f"r{k}", float(k), "v", None)
            assert kept == (len(expected) < 700)
            if kept:
                expected.append(k)
            k += 1
        fullest = max(fullest, len(expected))
        batch = rows.take(int(rng.integers(1, 9)))
        if batch is None:
            assert not expected
            continue
        want, expected = expected[: len(batch)], expected[len(batch) :]
        np.testing.assert_array_equal(batch.x, np.repeat(np.array(want, dtype=np.float32)[:, None], 3, 1))
        np.testing.assert_array_equal(batch.probs[:, 1], want)
        assert batch.ids == [f"r{j}" for j in want] and batch.x.dtype == np.float32
        assert len(rows) == len(expected)
    assert fullest == 700 and k > 2000  # it filled up and refused rows


def test_rows_of_another_width_wait_until_the_old_ones_are_taken() -> None:
    """A student with other inputs was activated: its rows are refused until the old ones leave."""
    rows = WaitingRows(capacity=10)
    assert _add(rows, 1)
    wider = np.zeros((1, 5))
    assert not _add_row(rows, wider, np.zeros((1, 2)), "w1", 0.0, "v2", None)
    old = rows.take(5)
    assert old is not None and old.x.shape == (1, 3)
    assert _add_row(rows, wider, np.zeros((1, 2)), "w2", 0.0, "v2", None)
    new = rows.take(5)
    assert new is not None and new.x.shape == (1, 5) and new.ids == ["w2"]


def test_a_waiting_row_is_a_copy_of_the_request_arrays() -> None:
    """The request's own arrays are offered; changing them later must not change the queued row."""
    rows = WaitingRows(capacity=4)
    x, probs = np.array([[1.5, -2.0, 3.0]]), np.array([[0.25, 0.75]], dtype=np.float32)
    assert _add_row(rows, x, probs, "r1", 0.0, "v1", None)
    x[:] = 9.0
    probs[:] = 0.0
    batch = rows.take(1)
    assert batch is not None
    np.testing.assert_array_equal(batch.x, [[1.5, -2.0, 3.0]])
    np.testing.assert_array_equal(batch.probs, [[0.25, 0.75]])
    batch.x[0, 0] = 7.0  # the batch's arrays are its own (writable), not views of the buffers
    assert _add_row(rows, x, probs, "r2", 0.0, "v1", None)
    later = rows.take(1)
    assert later is not None and later.x[0, 0] == 9.0


def test_rows_in_bulk_keep_what_fits_and_refuse_another_width_while_old_rows_wait() -> None:
    rows = WaitingRows(capacity=4)
    x, probs = np.arange(9.0).reshape(3, 3), np.full((3, 2), 0.5, dtype=np.float32)
    assert rows.extend(Rows(x, probs, ["a", "b", "c"], [1.0, 2.0, 3.0], ["v"] * 3, [None] * 3)) == 3
    more = Rows(x, probs, ["d", "e", "f"], [4.0, 5.0, 6.0], ["v"] * 3, [None] * 3)
    assert rows.extend(more) == 1  # room for one
    wide = Rows(np.zeros((1, 5)), probs[:1], ["g"], [7.0], ["w"], [None])
    assert rows.take(1) is not None
    assert rows.extend(wide) == 0  # three old rows still wait
    batch = rows.take(10)
    assert batch is not None and batch.ids == ["b", "c", "d"] and batch.x.shape == (3, 3)
    np.testing.assert_array_equal(batch.x[2], [0.0, 1.0, 2.0])
    assert rows.extend(wide) == 1  # drained: the new width is taken
    assert rows.take(1).x.shape == (1, 5)  # type: ignore[union-attr]
