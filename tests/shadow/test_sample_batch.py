"""Columnar sample batches expand to the insert rows, outcomes and quarantine flags they stand for."""

from __future__ import annotations

import pickle

import numpy as np
import orjson
import pytest

from distill_watchdog.store import SampleBatch, TeacherColumn


def _batch() -> SampleBatch:
    rng = np.random.default_rng(0)
    return SampleBatch(
        request_ids=["r0", "r1", "r2", "r3"],
        at=[1.0, 2.0, 3.0, 4.0],
        features=rng.normal(size=(4, 3)).astype(np.float32),
        student_probs=np.full((4, 2), 0.5, dtype=np.float32),
        student_versions=["s1", "s1", "s2", "s2"],
        slices=[{"sensor": "a"}, {}, {"sensor": "b"}, {}],
        teachers={
            # a general teacher answered every row with a new (untrusted) version
            "big": TeacherColumn([0, 1, 2, 3], "v2", np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]),
            # a specialist for rows 0 and 2 whose call failed
            "expert": TeacherColumn([0, 2], "", None),
        },
    )


def test_outcomes_and_rows_follow_the_settled_quarantine():
    batch = _batch()
    assert batch.outcomes() == {"quarantined": 0, "stored": 4, "teacher_error": 0}
    batch.teachers["big"].quarantined = True  # settled: v2 is not trusted
    assert batch.outcomes() == {"quarantined": 4, "stored": 0, "teacher_error": 0}
    samples, outputs = pickle.loads(pickle.dumps(batch)).rows()  # as the writing process sees it
    assert [row[0] for row in samples] == ["r0", "r1", "r2", "r3"]  # the store assigns the keys
    assert all(row[6] is True for row in samples)  # every row has a quarantined answer
    by_row = {(row, teacher): rest for row, teacher, *rest in outputs}  # answers name their row
    assert by_row[0, "expert"] == ["", None, False]  # a failure is never quarantined
    assert (1, "expert") not in by_row
    assert by_row[1, "big"] == ["v2", np.float32([0, 1]).tobytes(), True]  # float32 bytes
    assert np.frombuffer(samples[2][2], "<f4").tolist() == batch.features[2].tolist()
    assert samples[2][4] == "s2" and orjson.loads(samples[2][5]) == {"sensor": "b"}


def test_rows_no_teacher_answered_are_teacher_errors():
    batch = _batch()
    batch.teachers["big"] = TeacherColumn([0, 1, 2, 3], "", None)
    assert batch.outcomes() == {"quarantined": 0, "stored": 0, "teacher_error": 4}


def test_eval_set_freezes_only_once_enough_rows_are_counted(store_url):
    """The count (capped) sees what `first_teacher_labelled` loads: ok answers of that version,
    not failures, quarantined rows or other versions; freezing waits for the minimum."""
    from distill_watchdog.evalset import freeze_from_samples
    from distill_watchdog.store import Store

    store = Store(store_url)
    batch = _batch()  # "big" v2 answered 4 rows; "expert" failed on 2
    store.add_sample_batches([batch])
    quarantined = _batch()
    quarantined.teachers["big"].quarantined = True
    other = _batch()
    other.teachers["big"].version = "v3"
    store.add_sample_batches([quarantined, other])
    assert store.count_teacher_labelled("big", "v2", 100) == 4
    assert store.count_teacher_labelled("big", "v2", 3) == 3
    assert store.count_teacher_labelled("big", "v3", 100) == 4
    assert store.count_teacher_labelled("expert", "", 100) == 0
    assert freeze_from_samples(store, "big", "v2", size=6, minimum=6) == 0
    assert store.eval_count("big") == 0
    assert freeze_from_samples(store, "big", "v2", size=6, minimum=4) == 4
    assert store.eval_count("big") == 4


def test_a_flush_whose_caller_is_cancelled_still_writes_its_rows(make_settings):
    """Shutdown cancels the task that is flushing; its write goes on, and `stop` waits for it
    before ending the teacher processes, so the answered rows are stored and counted."""
    import asyncio

    from distill_watchdog.shadow import TeacherWorker
    from distill_watchdog.shadow.teachers.pinning import Pins
    from distill_watchdog.shadow.teachers.pool import TeacherProcesses
    from distill_watchdog.store import Store

    from .helpers import sample_count

    settings = make_settings()
    store = Store(settings.store_url)
    outcomes = ("stored", "quarantined", "teacher_error", "dropped")
    before = {o: sample_count(o) for o in outcomes}

    async def scenario() -> None:
        service = TeacherWorker(settings, store)
        service.pins = Pins(store, "quarantine")
        service.pins.load({"big": None, "expert": None})
        service._processes = TeacherProcesses([], workers=1)  # a real one: it does the insert
        await service._processes.start()
        service._pending = [_batch(), _batch()]
        flushing = asyncio.create_task(service._flush())
        await asyncio.sleep(0)  # the write has started (it packs the first batch)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        await service.stop()  # waits for the write, then ends the teacher process
        assert not service._processes.pids()

    asyncio.run(scenario())
    assert store.count_samples() == 8
    counted = {o: sample_count(o) - before[o] for o in outcomes}
    assert counted["dropped"] == 0 and sum(counted.values()) == 8  # each row counted once, as written


def test_later_inserts_get_later_keys_and_answers_follow_their_rows(store_url):
    """Keys rise with each insert, so bulk inserts append to the key indexes instead of touching a
    page per row; each answer is stored under its own row's key."""
    import sqlalchemy as sa

    from distill_watchdog.store import Store

    store = Store(store_url)
    first, second = _batch(), _batch()
    second.request_ids = ["q0", "q1", "q2", "q3"]
    store.add_sample_batches([first])
    store.add_sample_batches([second])
    with store.db.engine.connect() as conn:
        keys = dict(conn.execute(sa.text("SELECT request_id, id FROM samples")).all())
        answers = conn.execute(sa.text("SELECT sample_id, teacher, probs FROM teacher_outputs")).all()
    assert max(keys[f"r{i}"] for i in range(4)) < min(keys[f"q{i}"] for i in range(4))
    by_key = {(key, teacher): probs for key, teacher, probs in answers}
    assert len(by_key) == 12  # 4 + 2 answers per batch
    for i in range(4):
        for rid in (f"r{i}", f"q{i}"):
            assert bytes(by_key[keys[rid], "big"]) == np.float32(np.eye(2)[i % 2]).tobytes()
            assert ((keys[rid], "expert") in by_key) == (i % 2 == 0)


def test_a_slices_rows_are_counted_after_a_time_without_quarantined_rows(store_url):
    """What a run can read of a slice that left the window: its pairs matched as stored, with
    LIKE's wildcards (`%`, `_`) taken literally."""
    from distill_watchdog.store import Store

    from support import SampleRecord, add_samples

    rows = [
        *[({"sensor": "c"}, 100.0 + i, i == 4) for i in range(5)],  # the last one quarantined
        ({"sensor": "cc"}, 101.0, False),
        ({"site": "x", "sensor": "c"}, 103.0, False),
        ({"sensor": "a%b"}, 101.0, False),
        ({"sensor": "aXb"}, 101.0, False),
        ({"sen_or": "c"}, 101.0, False),
    ]
    store = Store(store_url)
    add_samples(
        store,
        [
            SampleRecord(f"s{i}", f"r{i}", at, np.zeros(2), np.full(2, 0.5), "v1", slices, quarantined, {})
            for i, (slices, at, quarantined) in enumerate(rows)
        ],
    )
    assert store.count_slice_rows("sensor=c", 0.0) == 5  # four of its own, one with another key
    assert store.count_slice_rows("sensor=c", 101.5) == 3
    assert store.count_slice_rows("sensor=c,site=x", 0.0) == 1
    assert store.count_slice_rows("sensor=a%b", 0.0) == 1
    assert store.count_slice_rows("sen_or=c", 0.0) == 1
