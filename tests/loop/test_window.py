"""The monitor window read as columns equals the rows it stands for, row by row."""

from __future__ import annotations

import time

import numpy as np

from distill_watchdog.loop.monitor.window import load_window, read_window, window_from_columns
from distill_watchdog.store import Store

from support import SampleRecord, add_samples, recent_samples, sample_columns

WEIGHTS = {"a": 1.0, "b": 2.0, "c": 0.0}  # c's answers count for nothing


def _seed(store: Store, n: int, now: float) -> None:
    rng = np.random.default_rng(7)
    kinds = [{}, {"sensor": "a"}, {"sensor": "b", "site": "n"}]
    records = []
    for k in range(n):
        teachers = {}
        for name in WEIGHTS:
            fate = rng.integers(0, 5)  # answered (3 in 5), failed, quarantined
            probs = rng.dirichlet(np.ones(3)).tolist()
            if fate == 3:
                teachers[name] = (f"{name}1", None, False)
            else:
                teachers[name] = (f"{name}{1 + (fate == 4)}", probs, bool(fate == 4))
        records.append(
            SampleRecord(
                id=f"s{k:05d}",
                request_id=f"r{k}",
                at=now - float(rng.permutation(n)[k]),  # stored out of time order
                features=rng.normal(size=4).round(3).tolist(),
                student_probs=rng.dirichlet(np.ones(3)).tolist(),
                student_version=f"v{k % 2}",
                slices=kinds[k % 3],
                quarantined=bool(k % 11 == 0),
                teachers=teachers,
            )
        )
    add_samples(store, records)
    store.add_labels([(f"r{k}", k % 3) for k in range(0, n, 4)])


def _expected(rows: list[dict]) -> dict:
    """The window's meaning, row by row, from the store's per-row view."""
    out: dict = {"x": [], "teacher": [], "labels": [], "slices": [], "at": [], "versions": {}, "dropped": 0}
    for r in sorted(rows, key=lambda r: r["at"]):
        usable = [(n, a) for n, a in r["teachers"].items() if not a["quarantined"] and a["probs"] is not None]
        total = sum(WEIGHTS[n] for n, _ in usable)
        if not usable or total <= 0:
            out["dropped"] += 1
            continue
        out["teacher"].append(sum(WEIGHTS[n] * np.asarray(a["probs"]) for n, a in usable) / total)
        out["x"].append(r["features"])
        out["labels"].append(-1 if r["label"] is None else r["label"])
        out["slices"].append([f"{k}={v}" for k, v in sorted(r["slices"].items())])
        out["at"].append(r["at"])
        for n, a in r["teachers"].items():
            if a["version"]:
                out["versions"].setdefault(n, set()).add(a["version"])
    return out


def test_the_columnar_window_matches_the_rows(store_url, make_settings) -> None:
    store = Store(store_url)
    now = time.time()
    _seed(store, 400, now)
    w = window_from_columns(sample_columns(store, 300), WEIGHTS)
    want = _expected(recent_samples(store, 300))
    assert len(w) + w.dropped_no_teacher == 300 and w.dropped_no_teacher == want["dropped"] > 0
    np.testing.assert_allclose(w.x, want["x"], rtol=1e-6)
    np.testing.assert_allclose(w.teacher, want["teacher"], rtol=1e-12)
    np.testing.assert_array_equal(w.labels, want["labels"])
    np.testing.assert_array_equal(w.at, want["at"])
    assert w.slices == want["slices"]
    assert w.teacher_versions == {k: sorted(v) for k, v in want["versions"].items()}
    # `monitor.window_s`: only rows that recent, still capped at `monitor.window`
    settings = make_settings(monitor={"window": 300, "window_s": 100.0})
    recent = load_window(store, settings)
    expected_recent = sum(1 for t in want["at"] if t >= now - 100.0)
    assert 0 < len(recent) <= expected_recent + 5 and recent.at.min() >= now - 100.0
    assert sample_columns(store, 300, since=1e12).ids == []


def test_the_window_read_in_chunks_equals_one_read(store_url, make_settings) -> None:
    store = Store(store_url)
    _seed(store, 400, time.time())
    whole = window_from_columns(sample_columns(store, 350), WEIGHTS)
    chunked = read_window(store, 350, WEIGHTS, chunk=37)  # keyset pages, ties in `at` included
    for name in ("x", "student", "teacher", "labels", "at", "student_versions"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    assert chunked.slices == whole.slices and chunked.teacher_versions == whole.teacher_versions
    assert chunked.dropped_no_teacher == whole.dropped_no_teacher


def test_rows_of_another_shape_are_skipped(store_url) -> None:
    store = Store(store_url)
    now = time.time()
    _seed(store, 100, now)
    wide = [
        SampleRecord(
            id=f"w{k:05d}", request_id=f"w{k}", at=now + k, features=[0.5] * 9, student_probs=[0.5, 0.5],
            student_version="v0", slices={}, quarantined=False, teachers={"a": ("a1", [0.5, 0.5], False)},
        )
        for k in range(30)
    ]  # fmt: skip
    add_samples(store, wide)
    narrow = read_window(store, 1000, WEIGHTS, features=4, classes=3)
    assert narrow.x.shape[1] == 4 and len(narrow) + narrow.dropped_no_teacher == 90  # 10 quarantined
    assert len(read_window(store, 1000, WEIGHTS, features=9, classes=2)) == 30
    # unset: the newest row's shape decides
    assert read_window(store, 1000, WEIGHTS).x.shape[1] == 9
    # the newest 30 rows are wide: skipped pages go on until the window has its rows of the shape
    paged = read_window(store, 50, WEIGHTS, features=4, classes=3, chunk=7)
    assert paged.x.shape[1] == 4 and len(paged) + paged.dropped_no_teacher == 50
    whole = read_window(store, 50, WEIGHTS, features=4, classes=3)
    np.testing.assert_array_equal(paged.at, whole.at)
