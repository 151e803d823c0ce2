"""The upgrade of a version-2 store (text row ids) to integer keys: rows and answers identical,
resumable, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from distill_watchdog.store import SCHEMA_VERSION, SampleBatch, Store, TeacherColumn, migrate
from distill_watchdog.store.db import make_engine

from support import interrupt_upgrade, recent_samples, text_keyed_tables

_V2 = text_keyed_tables("bytes")  # the version-2 tables of sampled rows


def _v2_store(url: str, n: int) -> dict[str, dict]:
    """A version-2 store of `n` rows (inserted out of key order); returns each row as written,
    by request id, with its answers by teacher."""
    rng = np.random.default_rng(5)
    engine = make_engine(url)
    _V2.create_all(engine)
    rows, answers, want = [], [], {}
    for k in rng.permutation(n):
        sid, rid = f"{k:032x}", f"r{k}"
        row = dict(
            id=sid,
            request_id=rid,
            at=1000.0 + k // 2,  # pairs of rows share a time
            features=rng.normal(size=5).astype("<f4").tobytes(),
            student_probs=rng.dirichlet(np.ones(3)).astype("<f4").tobytes(),
            student_version=f"v{k % 2}",
            slice_json='{"site": "a"}' if k % 3 else "{}",
            quarantined=bool(k % 13 == 0),
            label=int(k % 3) if k % 4 == 0 else None,
            labelled_at=2000.0 + k if k % 4 == 0 else None,
        )
        mine = {"big": ("1", rng.dirichlet(np.ones(3)).astype("<f4").tobytes(), row["quarantined"])}
        if k % 5 == 0:
            mine["small"] = ("", None, False)  # a failed call
        rows.append(row)
        answers += [
            dict(sample_id=sid, teacher=t, version=v, probs=p, quarantined=q) for t, (v, p, q) in mine.items()
        ]
        want[rid] = {**row, "teachers": mine}
    answers.append(dict(sample_id=f"{n + 7:032x}", teacher="big", version="1", probs=None, quarantined=False))
    first = answers[0]
    answers.append({**first, "version": "later"})  # a second answer of one teacher: the first is kept
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_info (id, version) VALUES (1, 2)"))
        conn.execute(_V2.tables["samples"].insert(), rows)
        conn.execute(_V2.tables["teacher_outputs"].insert(), answers)
    engine.dispose()
    return want


def _stored(store: Store) -> dict[str, dict]:
    """Every row as the upgraded store holds it, by request id (quarantined ones included)."""
    with store.db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM samples")).mappings().all()
        answers = conn.execute(sa.text("SELECT * FROM teacher_outputs")).mappings().all()
    by_key: dict[int, dict] = {}
    out = {}
    for row in rows:
        entry = {k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in row.items()}
        entry["quarantined"] = bool(entry["quarantined"])
        entry["teachers"] = {}
        by_key[entry["id"]] = entry
        out[entry["request_id"]] = entry
    for a in answers:
        probs = None if a["probs"] is None else bytes(a["probs"])
        by_key[a["sample_id"]]["teachers"][a["teacher"]] = (a["version"], probs, bool(a["quarantined"]))
    return out


def _check(store: Store, want: dict[str, dict]) -> None:
    got = _stored(store)
    assert set(got) == set(want)
    keys = [row["id"] for row in got.values()]
    assert all(isinstance(k, int) for k in keys) and len(set(keys)) == len(keys)
    for rid, row in want.items():
        mine = got[rid]
        for column in ("at", "features", "student_probs", "student_version", "slice_json", "quarantined"):
            assert mine[column] == row[column], (rid, column)
        assert mine["label"] == row["label"] and mine["labelled_at"] == row["labelled_at"]
        assert mine["teachers"] == row["teachers"]
    assert store.db.schema_version() == SCHEMA_VERSION
    assert {"samples_v2", "teacher_outputs_v2"}.isdisjoint(sa.inspect(store.db.engine).get_table_names())


def _write_after(store: Store, want: dict[str, dict]) -> None:
    """The upgraded store takes new rows (fresh keys) and labels (request ids found)."""
    batch = SampleBatch(
        request_ids=["new"],
        at=[5000.0],
        features=np.zeros((1, 5), np.float32),
        student_probs=np.full((1, 3), 1 / 3, np.float32),
        student_versions=["v0"],
        slices=[{}],
        teachers={"big": TeacherColumn([0], "1", np.full((1, 3), 1 / 3, np.float32))},
    )
    assert store.add_sample_batches([batch]) == 1
    assert store.add_labels([("new", 2), ("r1", 1)]) == (2, [])
    newest = recent_samples(store, 1)[0]
    assert newest["request_id"] == "new" and newest["label"] == 2 and "big" in newest["teachers"]
    assert newest["id"] > max(row["id"] for rid, row in _stored(store).items() if rid != "new")


def test_a_version_2_store_is_upgraded_with_rows_and_answers_identical(store_url, monkeypatch):
    monkeypatch.setattr(migrate, "BATCH", 37)  # many batches
    want = _v2_store(store_url, 300)
    store = Store(store_url)
    _check(store, want)
    _write_after(store, want)


def test_an_interrupted_key_upgrade_resumes(store_url, monkeypatch):
    monkeypatch.setattr(migrate, "BATCH", 50)
    want = _v2_store(store_url, 300)
    counts = interrupt_upgrade(
        store_url,
        migrate.integer_keys,
        2,
        "SELECT count(*) FROM samples",
        "SELECT count(*) FROM samples_v2",
        "SELECT version FROM schema_info",
    )
    assert counts == [100, 200, 2]  # moved, still in the old table, version
    store = Store(store_url)  # the next start carries on
    _check(store, want)
    _write_after(store, want)
