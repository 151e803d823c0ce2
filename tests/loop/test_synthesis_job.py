"""Synthesis for weak slices in the loop: the job a run builds turns the engine's stage on.

Real parts: a real store and registry, the loop's build, the real engine on the built folder
with the daemon's ONNX teacher labelling the synthetic rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from distill_watchdog.config import load_settings
from distill_watchdog.loop.build import build_job
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store

from .helpers import seed_samples
from support import write_model


def _parts(tmp_path: Path, **policy: object) -> tuple:
    teacher, _ = write_model(tmp_path / "src", stem="teacher", seed=1)
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        teachers=[{"name": "big", "kind": "onnx", "location": str(teacher), "timeout_s": 7}],
        monitor={"window": 600},
        policy={"min_samples": 60, **policy},
        distill={
            "job": {
                "student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [16]}},
                "train": {"epochs": 2},
                "synthesis": {"generator": "mymod:make"},
            }
        },
    )
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir)
    info = registry.register_files(*write_model(tmp_path / "src", stem="parent"))
    registry.record_activation(info.version, actor="test")
    seed_samples(store, info.version, n=600, shift_c=2.0)
    return settings, store, registry


def test_weak_slices_get_teacher_labelled_synthetic_rows_in_training_only(tmp_path: Path) -> None:
    from distill_engine import run_job_file

    settings, store, registry = _parts(tmp_path)
    run = tmp_path / "run"
    built = build_job(settings, store, registry, run, "r1", ["sensor=c"])
    job = yaml.safe_load((run / "job.yaml").read_text())
    assert job["synthesis"]["enabled"] is True and job["synthesis"]["slices"] == ["sensor=c"]
    # The user generator is not allow-listed: dropped, and the build says so.
    assert "generator" not in job["synthesis"] and built["synthesis"]["refused_generator"] == "mymod:make"
    assert job["teachers"] == [
        {
            "name": "big",
            "kind": "onnx",
            "location": str((tmp_path / "src" / "teacher.onnx").resolve()),
            "weight": 1.0,
            "slices": [],
            "timeout_s": 7.0,
        }
    ]
    with np.load(run / "holdout.npz") as hold:
        held = len(hold["x"])
    run_job_file(run / "job.yaml", run / "out", progress="none")
    result = json.loads((run / "out" / "result.json").read_text())
    counts = result["synthesis"]["slices"]["sensor=c"]
    assert counts["generated"] > 0 and result["synthesis"]["teacher_calls"] > 0
    with np.load(run / "holdout.npz") as hold:  # the hold-out (the engine's eval set) is untouched
        assert len(hold["x"]) == held and set(hold["slice"]) <= {"sensor=a", "sensor=b", "sensor=c"}


def test_synthesis_off_and_allowed_generators(tmp_path: Path) -> None:
    settings, store, registry = _parts(tmp_path, synthesis=False)
    build_job(settings, store, registry, tmp_path / "off", "r1", ["sensor=c"])
    assert "synthesis" not in yaml.safe_load((tmp_path / "off" / "job.yaml").read_text())
    settings.policy.synthesis = True
    settings.distill.allowed_factories = ["mymod:*"]
    built = build_job(settings, store, registry, tmp_path / "on", "r1", ["sensor=c"])
    job = yaml.safe_load((tmp_path / "on" / "job.yaml").read_text())
    assert job["synthesis"]["generator"] == "mymod:make" and "refused_generator" not in built["synthesis"]
    assert build_job(settings, store, registry, tmp_path / "none", "r2", [])["synthesis"] is None


def test_a_weak_slices_rows_since_it_was_healthy_are_weighted_seed_synthesis_and_judge_gain(
    tmp_path: Path,
) -> None:
    import time
    from unittest import mock

    settings, store, registry = _parts(tmp_path)
    healthy_at = time.time() - 300.5  # the 600 seeded rows are 1 s apart, the newest 1 s old
    with mock.patch("distill_watchdog.store.runs.time.time", return_value=healthy_at):
        store.add_decision(None, "ok", "within thresholds", {"breached": False, "weak_slices": []})
    run = tmp_path / "run"
    built = build_job(settings, store, registry, run, "r1", ["sensor=c"])
    # Rows i = 300..599 are newer than the decision; sensor c is every third row: 100 of them.
    assert built["weak_counts"]["sensor=c"]["train"] + built["weak_counts"]["sensor=c"]["holdout"] == 100
    with np.load(run / "train.npz") as train, np.load(run / "holdout.npz") as hold:
        heavy = train["weight"] == settings.policy.weak_slice_weight
        assert set(train["slice"][heavy]) == {"sensor=c"}
        assert heavy.sum() == built["weak_counts"]["sensor=c"]["train"]
        assert hold["changed"].sum() == built["weak_counts"]["sensor=c"]["holdout"]
        assert set(hold["slice"][hold["changed"]]) == {"sensor=c"}
        assert (hold["slice"] == "sensor=c").sum() > hold["changed"].sum()  # older c rows held out too
    job = yaml.safe_load((run / "job.yaml").read_text())
    assert job["synthesis"]["min_seed_weight"] == settings.policy.weak_slice_weight
