"""What clients and uploads put into the loop's data: slice values without number, labels outside
the classes, a card naming any factory. Real store (SQLite and PostgreSQL), no daemon."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from distill_watchdog.config import load_settings
from distill_watchdog.loop.factories import factory_allowed
from distill_watchdog.loop.monitor.cycle import run_cycle
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store

from .helpers import seed_samples, softmax
from support import SampleRecord, add_samples


def _setup(tmp_path: Path, store_url: str, model_files, card_extra=None, **sections):
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        store={"url": store_url},
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        **{"monitor": {"min_rows": 50}, "policy": {"min_samples": 60}, **sections},
    )
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir)
    model, card = model_files(card_extra=card_extra or {})
    info = registry.register_files(model, card)
    registry.record_activation(info.version, actor="test")
    return settings, store, registry, info.version


def _rows(version: str, n: int, slices, labels_from: int = 0) -> list[SampleRecord]:
    rng = np.random.default_rng(3)
    student = softmax(rng.normal(size=(n, 10)))
    teacher = softmax(rng.normal(size=(n, 10)))
    now = time.time()
    return [
        SampleRecord(
            id=f"s{labels_from + i:08d}",
            request_id=f"r{labels_from + i}",
            at=now - n + i,
            features=np.zeros(40, np.float32),
            student_probs=student[i],
            student_version=version,
            slices=slices(i),
            quarantined=False,
            teachers={"big": ("v1", teacher[i], False)},
        )
        for i in range(n)
    ]


def test_twenty_thousand_slice_values_make_a_bounded_cycle(tmp_path, store_url, model_files) -> None:
    """Top values per key plus `key=(other)`, then the largest labels plus `(other)`: the cycle's
    table and stored summary stay small whatever clients send as slice values."""
    n = 20_000
    settings, store, registry, version = _setup(
        tmp_path, store_url, model_files, monitor={"min_rows": 50, "window": n}
    )
    add_samples(store, _rows(version, n, lambda i: {"user": f"u{i}", "sensor": "abc"[i % 3]}))
    result = run_cycle(settings, store, registry)
    assert result["outcome"] == "ok" and result["rows"] == n
    table = result["slices"]
    users = [s for s in table if s.startswith("user=u")]
    assert len(users) == settings.slices.max_values_per_key == 50
    assert table["user=(other)"]["n"] == n - 50
    assert {"all", "sensor=a", "sensor=b", "sensor=c"} <= set(table) and len(table) == 1 + 3 + 50 + 1
    assert not any(w["slice"].endswith("(other)") for w in result["weak_slices"])
    summary = store.recent_cycles(1)[0].summary_json
    assert len(summary) < 100_000  # the unbounded cycle stored 1.26 MB
    assert orjson.loads(summary)["slices"].keys() == table.keys()

    settings.slices.max_slices = 10
    table = run_cycle(settings, store, registry)["slices"]
    assert len(table) == 1 + 10 + 1  # `all`, the ten largest, `(other)`
    assert {"user=(other)", "sensor=a", "sensor=b", "sensor=c"} <= set(table)
    assert table["(other)"]["n"] == 50 - 6  # the rows of the kept users that the cycle's bound cut


def test_stored_labels_outside_the_classes_are_skipped_and_counted(tmp_path, store_url, model_files) -> None:
    """Labels stored before they were checked (or for a student with more classes) must not make
    every cycle fail: they are left out of the label metrics and counted."""
    settings, store, registry, version = _setup(tmp_path, store_url, model_files)
    add_samples(store, _rows(version, 300, lambda i: {"sensor": "abc"[i % 3]}))
    accepted, _ = store.add_labels([(f"r{i}", 12 if i < 5 else i % 10) for i in range(40)] + [("r40", -7)])
    assert accepted == 41
    result = run_cycle(settings, store, registry)
    assert result["outcome"] == "ok"
    overall = result["overall"]
    assert overall["labelled"] == 35 and overall["invalid_labels"] == 6
    assert 0 <= overall["labels"]["brier"] <= 2 and 0 <= overall["labels"]["accuracy"] <= 1


def test_only_the_zoo_and_configured_factories_are_allowed() -> None:
    assert factory_allowed("distill_engine.zoo:mlp", [])
    assert factory_allowed("distill_engine.zoo:cnn1d", [])
    assert not factory_allowed("os:system", [])
    assert not factory_allowed("distill_engine.zoo", [])
    assert not factory_allowed("distill_engine.zoo.evil:mlp", [])
    assert factory_allowed("mypkg.models:net", ["mypkg.models:net"])
    assert factory_allowed("mypkg.models:other", ["mypkg.models:*"])
    assert not factory_allowed("mypkg.models_evil:net", ["mypkg.models:*"])
    assert not factory_allowed("mypkg:net", ["mypkg.models:*"])


@pytest.mark.parametrize(
    ("factory", "allowed", "refused"),
    [("os:system", [], True), ("mypkg.models:net", ["mypkg.models:*"], False)],
)
def test_a_card_naming_another_factory_is_refused_and_the_run_says_so(
    tmp_path, store_url, model_files, factory, allowed, refused
) -> None:
    from distill_watchdog.loop.build import build_job
    from distill_watchdog.loop.reports.render import render_run
    from distill_watchdog.store.tables import DistillRun

    training = {"student": {"factory": factory, "kwargs": {"command": "touch pwned"}}}
    settings, store, registry, version = _setup(
        tmp_path,
        store_url,
        model_files,
        card_extra={"training": training},
        distill={"allowed_factories": allowed},
    )
    seed_samples(store, version, n=300)
    run_dir = tmp_path / "run"
    built = build_job(settings, store, registry, run_dir, "r1", [])
    job = yaml.safe_load((run_dir / "job.yaml").read_text())
    if refused:
        assert built["refused_factory"] == {
            "factory": "os:system",
            "reason": "not distill_engine.zoo:* nor in distill.allowed_factories; "
            "the default student was used",
        }
        assert (
            job["student"]["factory"] == "distill_engine.zoo:mlp"
            and "command" not in job["student"]["kwargs"]
        )
    else:
        assert built["refused_factory"] is None and job["student"]["factory"] == factory
    now = time.time()
    detail = orjson.dumps({"reason": "test", "build": built}).decode()
    store.add_run(
        DistillRun(
            id="r1", created_at=now, updated_at=now, status="failed", run_dir=str(run_dir), detail_json=detail
        )
    )
    html = render_run(store, "r1").read_text()
    assert ('id="refused-factory"' in html) == refused
