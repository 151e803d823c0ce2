"""After training (child process): gates, reliability, the Evidently drift report, `report.json`.

`python -m distill_watchdog.jobs.finish --settings FILE --run RUN_ID` reads the run's folder
(`out/` from the engine), compares the candidate with its parent and writes
`report.json` (and `drift.html`) beside it. Exit code 0 when the report was written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import orjson


def _holdout(path: Path) -> Any:
    from .gates import EvalSet

    with np.load(path, allow_pickle=False) as d:
        y = np.asarray(d["y"])
        return EvalSet(
            "holdout",
            np.asarray(d["x"], dtype=np.float32),
            np.asarray(d["teacher_probs"], dtype=np.float64),
            y if len(y) and bool((y >= 0).all()) else None,
            [[s for s in str(v).split(",") if s and s != "none"] for v in d["slice"]],
        )


def _frozen(store: Any, settings: Any) -> Any:
    from .gates import EvalSet

    for teacher in settings.teachers:
        rows = store.eval_rows(teacher.name)
        if not rows:
            continue
        labels = [r.label for r in rows]
        return EvalSet(
            "frozen",
            np.asarray([orjson.loads(r.features_json) for r in rows], dtype=np.float32),
            np.asarray([orjson.loads(r.probs_json) for r in rows], dtype=np.float64),
            np.asarray(labels) if all(v is not None for v in labels) else None,
            [[s for s in r.slice.split(",") if s] for r in rows],
        )
    return None


def finish(settings: Any, run_id: str) -> dict[str, Any]:
    from distill_engine import metrics as M

    from ..card import parse_card
    from ..monitor.drift import evidently_report
    from ..monitor.reference import load_reference
    from ..registry import Registry
    from ..runtime import load_model
    from ..store import Store
    from .gates import judge

    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(f"no run {run_id}")
    detail = orjson.loads(run.detail_json)
    run_dir = Path(run.run_dir)
    out = run_dir / "out"
    result = json.loads((out / "result.json").read_text())
    card = parse_card(json.loads((out / "card.json").read_text()))
    candidate = load_model((out / "student.onnx").read_bytes(), card, "candidate", threads=1)
    parent = registry.load(run.parent_version)
    weak = [w["slice"] for w in detail.get("trigger_numbers", {}).get("weak_slices", [])]
    sets = []
    hold = _holdout(run_dir / "holdout.npz")
    sets.append((hold, parent.predict_proba(hold.x), candidate.predict_proba(hold.x)))
    frozen = _frozen(store, settings)
    if frozen is not None and frozen.x.shape[1] == hold.x.shape[1]:
        sets.append((frozen, parent.predict_proba(frozen.x), candidate.predict_proba(frozen.x)))
    cfg = settings.policy
    gates = judge(sets, weak, cfg.min_gain, cfg.max_regression, cfg.max_ece)
    _, before, after = sets[0]
    target = hold.labels if hold.labels is not None else hold.teacher.argmax(1)
    reliability = {
        "before": M.reliability_bins(before, target),
        "after": M.reliability_bins(after, target),
        "against": "labels" if hold.labels is not None else "teacher",
    }
    drift: dict[str, Any] = {"cycle": detail.get("trigger_drift")}
    try:
        reference = load_reference(settings, registry, run.parent_version)
        if reference is not None:
            drift["evidently"] = evidently_report(
                reference[0],
                reference[1],
                hold.x,
                before.argmax(1),
                settings.monitor.drift_method,
                settings.monitor.drift_threshold,
                run_dir / "drift.html",
                card.feature_names,
            )
    except Exception as exc:  # the report still stands without Evidently's page
        drift["evidently_error"] = f"{type(exc).__name__}: {exc}"
    report = {
        "run_id": run.id,
        "created_at": run.created_at,
        "trigger": run.trigger,
        "reason": detail.get("reason", ""),
        "trigger_numbers": detail.get("trigger_numbers", {}),
        "parent_version": run.parent_version,
        "drift": drift,
        "gates": {"passed": gates["passed"], "failed": gates["failed"], "gates": gates["gates"]},
        "slices": gates["tables"],
        "reliability": reliability,
        "curation": result.get("curation", {}),
        "stop": result.get("stop", {}),
        "teacher_versions": detail.get("build", {}).get("teacher_versions", {}),
        "engine": {
            "student": {k: v for k, v in result.get("student", {}).items() if k != "slices"},
            "teacher": {k: v for k, v in result.get("teacher", {}).items() if k != "slices"},
            "temperature": result.get("temperature"),
            "onnx_parity": result.get("onnx_parity"),
            "wall_seconds": result.get("wall_seconds"),
            "params": result.get("params"),
        },
        "build": detail.get("build", {}),
        "finished_at": time.time(),
    }
    (run_dir / "report.json").write_text(
        orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2).decode()
    )
    return {"passed": gates["passed"], "verdict": report["stop"].get("verdict")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--run", required=True)
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from ..config import Settings

    with open(args.settings) as fh:
        settings = Settings(**json.load(fh))
    try:
        print(json.dumps(finish(settings, args.run)))
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
