"""Columnar sample batches expand to the same rows, outcomes and quarantine flags as before."""

from __future__ import annotations

import pickle

import numpy as np

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


def test_outcomes_and_records_follow_the_settled_quarantine():
    batch = _batch()
    assert batch.outcomes() == {"quarantined": 0, "stored": 4, "teacher_error": 0}
    batch.teachers["big"].quarantined = True  # settled: v2 is not trusted
    assert batch.outcomes() == {"quarantined": 4, "stored": 0, "teacher_error": 0}
    records = pickle.loads(pickle.dumps(batch)).records()  # as the writing process sees it
    assert [r.request_id for r in records] == ["r0", "r1", "r2", "r3"]
    assert len({r.id for r in records}) == 4
    assert all(r.quarantined for r in records)
    assert records[0].teachers["expert"] == ("", None, False)  # a failure is never quarantined
    assert "expert" not in records[1].teachers
    np.testing.assert_array_equal(records[1].teachers["big"][1], [0.0, 1.0])
    np.testing.assert_array_equal(records[2].features, batch.features[2])
    assert records[2].student_version == "s2" and records[2].slices == {"sensor": "b"}


def test_rows_no_teacher_answered_are_teacher_errors():
    batch = _batch()
    batch.teachers["big"] = TeacherColumn([0, 1, 2, 3], "", None)
    assert batch.outcomes() == {"quarantined": 0, "stored": 0, "teacher_error": 4}
