"""Candidates that can grow: every candidate is gated and reported; the best that passes wins.

Real parts: ONNX students (the parent, a copy of it, and the teacher's own network as the
"wider" candidate), a real store and hold-out built by the loop, the gates' child code.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from distill_watchdog.config import load_settings
from distill_watchdog.loop.build import build_job
from distill_watchdog.loop.finish import finish
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store
from distill_watchdog.store.tables import DistillRun

from .helpers import seed_samples
from support import write_model

SYNTH = {
    "rows": 40,
    "weight": 0.5,
    "teacher_calls": 1,
    "slices": {"sensor=c": {"real_rows": 70, "generated": 210, "low_confidence": 100, "duplicates": 0,
                            "unlike_production": 30, "over_max_ratio": 40, "kept": 40}},
}  # fmt: skip


def _candidate(folder: Path, model: tuple[Path, Path], stop: str, params: int) -> None:
    folder.mkdir(parents=True)
    shutil.copy(model[0], folder / "student.onnx")
    card = json.loads(model[1].read_text())
    card["training"] = {"student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [params]}}}
    (folder / "card.json").write_text(json.dumps(card))
    result = {"stop": {"verdict": stop, "training": stop}, "params": {"student": params}, "synthesis": SYNTH}
    (folder / "result.json").write_text(json.dumps(result))


def test_the_wider_candidate_is_tried_gated_reported_and_chosen(tmp_path: Path) -> None:
    settings, store, registry, parent, version = _loop_store(tmp_path, 0)
    run_dir = tmp_path / "data" / "runs" / "r1"
    store.add_run(_run_row("r1", version, run_dir, ["sensor=c"]))
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
    from distill_watchdog.loop.reports.render import render_run

    page = render_run(store, "r1").read_text()
    assert 'id="candidates"' in page and "out-wide-1 <strong>(chosen)</strong>" in page
    assert 'id="synthesis"' in page and "<td>sensor=c</td><td>70</td><td>210</td>" in page


def test_a_labelled_slice_that_loses_accuracy_fails_the_regression_gate() -> None:
    """Agreeing more with the teacher where the teacher is wrong is still a regression in accuracy."""
    import numpy as np

    from distill_watchdog.loop.gates import EvalSet, judge

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    teacher_pred = labels.copy()
    teacher_pred[:40] = (labels[:40] + 1) % 5  # the teacher is wrong on 40 rows
    eye = np.eye(5)
    es = EvalSet("frozen", np.zeros((200, 3), np.float32), eye[teacher_pred], labels, [["s=a"]] * 200)
    verdict = judge([(es, eye[labels], eye[teacher_pred])], [], 0.01, 0.01, 1.0)
    gate = next(g for g in verdict["gates"] if g["slice"] == "s=a")
    assert gate["change"] > 0.15 and gate["accuracy_change"] < -0.15 and not gate["passed"]
    same = judge([(es, eye[labels], eye[labels])], [], 0.01, 0.01, 1.0)
    assert same["passed"]


def test_widening_plans_wider_students_within_the_parameter_budget(tmp_path: Path) -> None:
    import yaml

    from distill_watchdog.config import PolicyConfig
    from distill_watchdog.loop.widen import plan

    (tmp_path / "out").mkdir()
    job = {
        "student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [8]}},
        "train": {"epochs": 5},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    (tmp_path / "out" / "card.json").write_text(
        json.dumps({"num_features": 64, "classes": list("0123456789")})
    )
    result = {"stop": {"verdict": "converged", "training": "converged"}}
    (tmp_path / "out" / "result.json").write_text(json.dumps(result))
    assert plan(tmp_path, PolicyConfig())["variants"] == []  # not capacity-limited: nothing to grow
    result["stop"]["training"] = "capacity_limited"
    (tmp_path / "out" / "result.json").write_text(json.dumps(result))
    planned = plan(tmp_path, PolicyConfig(wider_candidates=2, max_params_factor=3.0))
    parent = 64 * 8 + 8 + 8 * 10 + 10
    assert len(planned["variants"]) == 2 and planned["diagnosis"] == "capacity_limited"
    for v in planned["variants"]:
        assert parent < v["params"] <= 3 * parent
        wide = yaml.safe_load((tmp_path / v["job"]).read_text())
        assert wide["student"] == {"factory": "distill_engine.zoo:mlp", "kwargs": v["kwargs"]}
        assert wide["train"] == {"epochs": 5} and "init_from" not in wide["student"]
    assert plan(tmp_path, PolicyConfig(wider_candidates=0))["variants"] == []
    # Not capacity-limited by its own stop rule, but it lost on a slice: grow too.
    result["stop"]["training"] = "converged"
    (tmp_path / "out" / "result.json").write_text(json.dumps(result))
    traded = plan(tmp_path, PolicyConfig(wider_candidates=1), ["sensor=b (frozen -0.045)"])
    assert len(traded["variants"]) == 1 and traded["traded"] == ["sensor=b (frozen -0.045)"]
    assert "lost on sensor=b" in traded["why"]
    # It passed, but left part of a weak slice's gap open: grow too.
    gap = plan(tmp_path, PolicyConfig(wider_candidates=1), [], ["sensor=c (gain +0.030 of gap 0.130)"])
    assert len(gap["variants"]) == 1 and "left open sensor=c" in gap["why"]


def test_wider_candidates_grow_from_the_warm_started_parent(tmp_path: Path) -> None:
    """With a warm start the variants start as the parent (its function kept); a variant the
    parent cannot grow into starts from scratch and says why."""
    import torch
    import yaml

    from distill_engine.export import export_onnx
    from distill_engine.zoo import mlp
    from distill_watchdog.config import PolicyConfig
    from distill_watchdog.loop.widen import plan

    parent = export_onnx(mlp(64, 10, hidden=[8]).eval(), 64, tmp_path / "parent.onnx")
    (tmp_path / "out").mkdir()
    student = {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [8]}, "init_from": str(parent)}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"student": student}))
    (tmp_path / "out" / "card.json").write_text(
        json.dumps({"num_features": 64, "classes": list("0123456789")})
    )
    result = {"stop": {"verdict": "converged", "training": "capacity_limited"}}
    (tmp_path / "out" / "result.json").write_text(json.dumps(result))
    planned = plan(tmp_path, PolicyConfig(wider_candidates=2))
    assert len(planned["variants"]) == 2
    for v in planned["variants"]:
        assert v["grown_from"] == str(parent)
        assert yaml.safe_load((tmp_path / v["job"]).read_text())["student"]["init_from"] == str(parent)
    torch.manual_seed(0)
    other = export_onnx(mlp(64, 10, hidden=[4, 4]).eval(), 64, tmp_path / "other.onnx")
    student["init_from"] = str(other)  # not the variants' layout: they start from scratch
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"student": student}))
    for v in plan(tmp_path, PolicyConfig(wider_candidates=2))["variants"]:
        assert v["grown_from"] is None and "narrower student" in v["from_scratch"]
        assert "init_from" not in yaml.safe_load((tmp_path / v["job"]).read_text())["student"]


def _run_row(
    run_id: str,
    version: str,
    run_dir: Path,
    weak: list[str],
    trigger: str = "policy",
    gap: float | None = None,
) -> DistillRun:
    numbers = {"weak_slices": [{"slice": w, "gap": gap} for w in weak]}
    return DistillRun(
        id=run_id,
        created_at=time.time(),
        updated_at=time.time(),
        status="running",
        trigger=trigger,
        parent_version=version,
        run_dir=str(run_dir),
        detail_json=orjson.dumps({"trigger_numbers": numbers}).decode(),
    )


def _loop_store(tmp_path: Path, parent_seed: int, shift_c: float = 3.0) -> tuple:
    """Settings, store and registry with an active parent (write_model seed `parent_seed`) and
    900 stored rows whose teacher is the seed-1 network."""
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        monitor={"window": 600},
        policy={"min_samples": 60, "max_ece": 1.0},  # the test networks are not calibrated
    )
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir)
    parent = write_model(tmp_path / "src", stem="parent", seed=parent_seed)
    info = registry.register_files(*parent)
    registry.record_activation(info.version, actor="test")
    seed_samples(store, info.version, n=900, shift_c=shift_c, teacher_seed=1)
    return settings, store, registry, parent, info.version


def test_a_candidate_that_loses_on_a_slice_or_leaves_its_gap_open_is_found(tmp_path: Path) -> None:
    from distill_watchdog.loop.widen import first_candidate

    # The parent is the teacher's own network: any other candidate loses somewhere.
    settings, store, registry, teacher_like, version = _loop_store(tmp_path, 1, shift_c=0.0)
    run_dir = tmp_path / "data" / "runs" / "r1"
    row = _run_row("r1", version, run_dir, ["sensor=c"])
    store.add_run(row)
    build_job(settings, store, registry, run_dir, "r1", ["sensor=c"])
    _candidate(run_dir / "out", teacher_like, "converged", 826)  # the parent again
    assert first_candidate(settings, store, row) == ([], [])  # no gap in the trigger: none to close
    # The cycle saw sensor c 30 points below the rest: the parent again gains nothing of it.
    gap_row = _run_row("r1", version, run_dir, ["sensor=c"], gap=0.3)
    left = "sensor=c (gain +0.000 [+0.000, +0.000] of gap 0.300)"
    assert first_candidate(settings, store, gap_row) == ([], [left])
    shutil.rmtree(run_dir / "out")
    _candidate(run_dir / "out", write_model(tmp_path / "src", stem="other", seed=0), "converged", 826)
    traded, _ = first_candidate(settings, store, row)
    assert {t.split(" ")[0] for t in traded} >= {"all", "sensor=a", "sensor=b"}


def test_a_gap_counts_as_closed_only_when_the_lower_end_of_its_interval_closes_it() -> None:
    """30 changed rows, 3 more right: +0.100 is over 80% of a 0.12 gap by its point estimate
    alone, which 30 rows cannot tell from noise; the wider variants must still be trained."""
    from distill_watchdog.loop.gates import EvalSet, changed_key, compare
    from distill_watchdog.loop.widen import CLOSED_SHARE, left_open

    n = 200
    teacher = np.tile([[0.9, 0.1]], (n, 1))
    before = teacher.copy()
    changed = np.zeros(n, dtype=bool)
    changed[-30:] = True
    before[-30:-10] = [0.1, 0.9]  # the parent gets 20 of the 30 changed rows wrong
    after = before.copy()
    after[-13:-10] = [0.9, 0.1]  # the candidate fixes 3 of them
    es = EvalSet("holdout", np.zeros((n, 1)), teacher, None, [["sensor=c"]] * n, changed)
    row = compare(es, before, after)[changed_key("sensor=c")]
    assert row["n"] == 30 and row["change"] == pytest.approx(0.1)
    assert row["change"] > CLOSED_SHARE * 0.12 and row["ci"][0] < 0.05
    assert left_open(row, 0.12)
    wide = {"change": 0.1, "ci": [0.1, 0.1]}  # the same gain, measured on many rows
    assert not left_open(wide, 0.12)
    assert left_open(wide, 0.2)


def test_a_policy_run_without_weak_slices_must_gain_overall_a_manual_one_need_not(tmp_path: Path) -> None:
    settings, store, registry, parent, version = _loop_store(tmp_path, 0)
    outcomes = {}
    for trigger in ("policy", "manual"):
        run_dir = tmp_path / "data" / "runs" / trigger
        store.add_run(_run_row(trigger, version, run_dir, [], trigger))
        build_job(settings, store, registry, run_dir, trigger, [])
        _candidate(run_dir / "out", parent, "converged", 826)  # the parent again: no gain anywhere
        outcomes[trigger] = finish(settings, trigger)
        report = json.loads((run_dir / "report.json").read_text())
        outcomes[trigger + "_failed"] = report["candidates"][0]["failed"]
    assert not outcomes["policy"]["passed"] and outcomes["policy_failed"] == ["min_gain all"]
    assert outcomes["manual"]["passed"] and outcomes["manual_failed"] == []


def test_the_gain_gate_judges_a_weak_slice_on_its_changed_rows() -> None:
    """A weak slice's older rows held out beside its changed ones must not hide (or fake) a gain."""
    import numpy as np

    from distill_watchdog.loop.gates import EvalSet, changed_key, judge

    n = 200
    teacher = np.eye(4)[np.arange(n) % 4]
    wrong = np.eye(4)[(np.arange(n) + 1) % 4]
    changed = np.arange(n) >= 160  # 40 changed rows of s=c; 160 older rows of s=c
    es = EvalSet("holdout", np.zeros((n, 3), np.float32), teacher, None, [["s=c"]] * n, changed)
    parent = np.where(changed[:, None], wrong, teacher)  # wrong on the changed rows only
    fixed = teacher  # right everywhere: +100% on the changed rows, +20% on the slice as a whole
    verdict = judge([(es, parent, fixed)], ["s=c"], 0.5, 0.01, 1.0)
    gate = next(g for g in verdict["gates"] if g["gate"] == "min_gain")
    assert gate["rows"] == "changed" and gate["n"] == 40 and gate["change"] == 1.0 and gate["passed"]
    assert verdict["tables"]["holdout"][changed_key("s=c")]["n"] == 40
    # Better on the older rows only: no gain where the problem is, whatever the slice's average.
    older_fixed = np.where(changed[:, None], wrong, teacher)
    parent_old = np.where(changed[:, None] | (np.arange(n) < 100)[:, None], wrong, teacher)
    verdict = judge([(es, parent_old, older_fixed)], ["s=c"], 0.01, 1.0, 1.0)
    gate = next(g for g in verdict["gates"] if g["gate"] == "min_gain")
    assert gate["change"] == 0.0 and not gate["passed"]
