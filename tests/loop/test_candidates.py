"""Candidates that can grow: every candidate is gated and reported; the best that passes wins.

Real parts: ONNX students (the parent, a copy of it, and the teacher's own network as the
"wider" candidate), a real store and hold-out built by the loop, the gates' child code.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import orjson

from distill_watchdog.config import load_settings
from distill_watchdog.jobs.build import build_job
from distill_watchdog.jobs.finish import finish
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store
from distill_watchdog.store.tables import DistillRun

from .helpers import seed_samples
from support import write_model


def _candidate(folder: Path, model: tuple[Path, Path], stop: str, params: int) -> None:
    folder.mkdir(parents=True)
    shutil.copy(model[0], folder / "student.onnx")
    card = json.loads(model[1].read_text())
    card["training"] = {"student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [params]}}}
    (folder / "card.json").write_text(json.dumps(card))
    result = {"stop": {"verdict": stop, "training": stop}, "params": {"student": params}}
    (folder / "result.json").write_text(json.dumps(result))


def test_the_wider_candidate_is_tried_gated_reported_and_chosen(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        monitor={"window": 600},
        policy={"min_samples": 60, "max_ece": 1.0},  # the test networks are not calibrated
    )
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir)
    parent = write_model(tmp_path / "src", stem="parent", seed=0)
    info = registry.register_files(*parent)
    registry.record_activation(info.version, actor="test")
    seed_samples(store, info.version, n=900, shift_c=3.0, teacher_seed=1)  # the teacher: seed 1
    run_dir = tmp_path / "data" / "runs" / "r1"
    weak = {"weak_slices": [{"slice": "sensor=c"}]}
    store.add_run(
        DistillRun(
            id="r1",
            created_at=time.time(),
            updated_at=time.time(),
            status="running",
            parent_version=info.version,
            run_dir=str(run_dir),
            detail_json=orjson.dumps({"trigger_numbers": weak}).decode(),
        )
    )
    build_job(settings, store, registry, run_dir, "r1", ["sensor=c"])
    # The first candidate learned nothing (the parent's own network) and was capacity-limited;
    # the wider one is the teacher's network: it gains everywhere.
    _candidate(run_dir / "out", parent, "capacity_limited", 826)
    _candidate(run_dir / "out-wide-1", write_model(tmp_path / "src", stem="wide", seed=1), "converged", 3000)
    widen = {"variants": [{"out": "out-wide-1", "kwargs": {"hidden": [64]}, "params": 3000}]}
    (run_dir / "widen.json").write_text(json.dumps(widen))
    outcome = finish(settings, "r1")
    assert outcome == {"passed": True, "verdict": "converged", "chosen": "out-wide-1"}
    report = json.loads((run_dir / "report.json").read_text())
    first, wide = report["candidates"]
    assert first["name"] == "out" and not first["passed"] and "min_gain sensor=c" in first["failed"]
    assert wide["name"] == "out-wide-1" and wide["passed"] and wide["chosen"] and wide["student"] == 3000
    assert wide["weak_gain"] > 0.2 and first["weak_gain"] == 0.0
    assert report["chosen"] == "out-wide-1" and report["gates"]["passed"]
