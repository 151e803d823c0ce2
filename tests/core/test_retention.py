"""Retention deletes old samples with their teacher answers in small transactions, on both stores."""

from __future__ import annotations

import time

from distill_watchdog.store import Store

from support import SampleRecord, add_samples, sample_columns


def test_retention_deletes_old_rows_in_batches_and_keeps_new_ones(store_url) -> None:
    store = Store(store_url)
    now = time.time()
    add_samples(
        store,
        [
            SampleRecord(
                id=f"{k:032x}", request_id=f"r{k}", at=now - 1000 + k, features=[0.0, 1.0],
                student_probs=[0.5, 0.5], student_version="v", slices={}, quarantined=False,
                teachers={"a": ("1", [0.5, 0.5], False), "b": ("1", None, False)},
            )
            for k in range(100)
        ]
    )  # fmt: skip
    deleted = store.delete_before(now - 1000 + 60, batch=7)  # nine transactions
    assert deleted["samples"] == 60 and deleted["teacher_outputs"] == 120
    left = sample_columns(store, 1000)
    assert sorted(left.at) == [now - 1000 + k for k in range(60, 100)]
    assert len(left.outputs) == 80  # the kept rows' answers are all there
