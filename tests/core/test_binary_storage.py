"""Vectors stored as float32 bytes, and the upgrade of a store that holds them as JSON text."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from distill_watchdog.store import SCHEMA_VERSION, Store, migrate
from distill_watchdog.store.db import make_engine

from support import SampleRecord, add_samples, interrupt_upgrade, recent_samples, text_keyed_tables

_OLD = text_keyed_tables("json")  # the version-1 tables that held vectors


def _old_store(url: str, n: int) -> dict[str, list]:
    """A version-1 store with `n` samples (features as float32 JSON, as that build wrote them)."""
    rng = np.random.default_rng(3)
    engine = make_engine(url)
    _OLD.create_all(engine)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    p = rng.dirichlet(np.ones(4), size=n).astype(np.float32)
    t = rng.dirichlet(np.ones(4), size=n).astype(np.float32)
    dump = orjson.dumps
    opt = orjson.OPT_SERIALIZE_NUMPY
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_info (id, version) VALUES (1, 1)"))
        conn.execute(
            _OLD.tables["samples"].insert(),
            [
                dict(
                    id=f"{k:032x}",
                    request_id=f"r{k}",
                    at=1000.0 + k,
                    features_json=dump(x[k], option=opt).decode(),
                    student_probs_json=dump(p[k], option=opt).decode(),
                    student_version="v1",
                    slice_json='{"site": "a"}',
                    quarantined=False,
                    label=k % 4 if k % 3 == 0 else None,
                )
                for k in range(n)
            ],
        )
        conn.execute(
            _OLD.tables["teacher_outputs"].insert(),
            [
                dict(
                    sample_id=f"{k:032x}",
                    teacher="big",
                    version="1",
                    quarantined=False,
                    probs_json=None if k % 7 == 0 else dump(t[k], option=opt).decode(),
                )
                for k in range(n)
            ],
        )
        conn.execute(
            _OLD.tables["eval_rows"].insert(),
            [
                dict(
                    teacher="big",
                    ordinal=k,
                    features_json=dump(x[k], option=opt).decode(),
                    label=None,
                    slice="",
                    probs_json=dump(t[k], option=opt).decode(),
                    version="1",
                    source="samples",
                )
                for k in range(10)
            ],
        )
    engine.dispose()
    return {"x": x, "p": p, "t": t}


def _check_identical(store: Store, want: dict, n: int) -> None:
    rows = sorted(recent_samples(store, n), key=lambda r: r["at"])
    assert len(rows) == n
    np.testing.assert_array_equal(np.asarray([r["features"] for r in rows], np.float32), want["x"])
    np.testing.assert_array_equal(np.asarray([r["student_probs"] for r in rows], np.float32), want["p"])
    for k, r in enumerate(rows):
        answer = r["teachers"]["big"]["probs"]
        if k % 7 == 0:
            assert answer is None
        else:
            np.testing.assert_array_equal(np.asarray(answer, np.float32), want["t"][k])
        assert r["label"] == (k % 4 if k % 3 == 0 else None) and r["slices"] == {"site": "a"}
    frozen = store.eval_rows("big")
    stored = np.stack([np.frombuffer(e.features, "<f4") for e in frozen])
    np.testing.assert_array_equal(stored, want["x"][:10])
    columns = {c["name"] for c in sa.inspect(store.db.engine).get_columns("samples")}
    assert "features_json" not in columns and "features" in columns
    assert store.db.schema_version() == SCHEMA_VERSION


def test_an_old_store_is_upgraded_with_rows_identical(store_url, monkeypatch):
    monkeypatch.setattr(migrate, "BATCH", 97)  # many batches
    want = _old_store(store_url, 1000)
    _check_identical(Store(store_url), want, 1000)


def test_an_interrupted_upgrade_resumes(store_url, monkeypatch):
    monkeypatch.setattr(migrate, "BATCH", 50)
    want = _old_store(store_url, 400)
    done, version = interrupt_upgrade(
        store_url,
        migrate.vectors_to_binary,
        3,
        "SELECT count(*) FROM samples WHERE features IS NOT NULL",
        "SELECT version FROM schema_info",
    )
    assert done == 150 and version == 1
    _check_identical(Store(store_url), want, 400)  # the next start carries on


def test_vectors_are_stored_as_float32_bytes(store_url):
    store = Store(store_url)
    x = np.arange(64, dtype=np.float32) / 7
    add_samples(
        store,
        [
            SampleRecord(
                id="a" * 32,
                request_id="r",
                at=time.time(),
                features=x,
                student_probs=[0.25] * 4,
                student_version="v",
                slices={},
                quarantined=False,
                teachers={"t": ("1", [0.5, 0.5, 0, 0], False)},
            )
        ],
    )
    with store.db.engine.connect() as conn:
        blob = conn.execute(sa.text("SELECT features FROM samples")).scalar()
    assert bytes(blob) == x.astype("<f4").tobytes()


@pytest.mark.parametrize("n", [0, 3])
def test_blob_rows_round_trip(n):
    from distill_watchdog.store.vectors import from_blobs, to_blobs

    m = np.random.default_rng(0).normal(size=(n, 5))
    np.testing.assert_array_equal(from_blobs(to_blobs(m), 5), m.astype(np.float32))
