"""After training (child process): gates, reliability, the Evidently drift report, `report.json`.

`python -m distill_watchdog.loop.finish --settings FILE --run RUN_ID` reads the run's folder
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

from distill_watchdog.store.vectors import from_blob


def _holdout(path: Path) -> Any:
    from distill_watchdog.loop.gates import EvalSet

    with np.load(path, allow_pickle=False) as d:
        y = np.asarray(d["y"])
        return EvalSet(
            "holdout",
            np.asarray(d["x"], dtype=np.float32),
            np.asarray(d["teacher_probs"], dtype=np.float64),
            y if len(y) and bool((y >= 0).all()) else None,
            [[s for s in str(v).split(",") if s and s != "none"] for v in d["slice"]],
            np.asarray(d["changed"], dtype=bool) if "changed" in d.files else None,
        )


def _frozen(store: Any, settings: Any) -> Any:
    from distill_watchdog.loop.gates import EvalSet

    for teacher in settings.teachers:
        rows = store.eval_rows(teacher.name)
        if not rows:
            continue
        labels = [r.label for r in rows]
        return EvalSet(
            "frozen",
            np.stack([from_blob(r.features) for r in rows]),
            np.stack([from_blob(r.probs) for r in rows]).astype(np.float64),
            np.asarray(labels) if all(v is not None for v in labels) else None,
            [[s for s in r.slice.split(",") if s] for r in rows],
        )
    return None


def _candidate_dirs(run_dir: Path) -> list[str]:
    """The run's candidates: `out`, then each wider variant that trained (`widen.json`)."""
    names = ["out"]
    widen = run_dir / "widen.json"
    if widen.exists():
        for v in json.loads(widen.read_text()).get("variants", []):
            if not v.get("error") and (run_dir / v["out"] / "student.onnx").exists():
                names.append(v["out"])
    return names


def _score(table: dict[str, Any], weak: list[str]) -> tuple[float, float]:
    """How a candidate ranks among those that pass: its weak slices' mean gain on the hold-out
    (on their changed rows where marked), then its hold-out agreement overall."""
    from distill_watchdog.loop.gates import changed_key

    gains = [table.get(changed_key(w), table[w])["change"] for w in weak if w in table]
    overall = table.get("all", {}).get("after", 0.0)
    return (sum(gains) / len(gains) if gains else overall, overall)


def _judge_all(settings: Any, run_dir: Path, parent: Any, weak: list[str], store: Any) -> dict[str, Any]:
    """Gates for every candidate; the chosen one is the best that passes (else the first)."""
    from distill_watchdog.card import parse_card
    from distill_watchdog.loop.gates import judge
    from distill_watchdog.runtime import load_model

    hold = _holdout(run_dir / "holdout.npz")
    bases: list[tuple[Any, np.ndarray]] = [(hold, parent.predict_proba(hold.x))]
    frozen = _frozen(store, settings)
    if frozen is not None and frozen.x.shape[1] == hold.x.shape[1]:
        bases.append((frozen, parent.predict_proba(frozen.x)))
    cfg = settings.policy
    judged = []
    for name in _candidate_dirs(run_dir):
        out = run_dir / name
        result = json.loads((out / "result.json").read_text())
        card = parse_card(json.loads((out / "card.json").read_text()))
        model = load_model((out / "student.onnx").read_bytes(), card, name, threads=1)
        sets = [(es, before, model.predict_proba(es.x)) for es, before in bases]
        gates = judge(sets, weak, cfg.min_gain, cfg.max_regression, cfg.max_ece)
        judged.append({"name": name, "result": result, "card": card, "sets": sets, "gates": gates})
    passing = [c for c in judged if c["gates"]["passed"]]
    chosen = (
        max(passing, key=lambda c: _score(c["gates"]["tables"]["holdout"], weak)) if passing else judged[0]
    )
    summary = [
        {
            "name": c["name"],
            "student": (c["result"].get("params") or {}).get("student"),
            "architecture": (c["card"].training or {}).get("student"),
            "passed": c["gates"]["passed"],
            "failed": [f"{g['gate']} {g.get('slice', '')}".strip() for g in c["gates"]["failed"]],
            "weak_gain": _score(c["gates"]["tables"]["holdout"], weak)[0],
            "holdout_agreement": c["gates"]["tables"]["holdout"].get("all", {}).get("after"),
            "stop": (c["result"].get("stop") or {}).get("verdict"),
            "chosen": c is chosen,
        }
        for c in judged
    ]
    return {"chosen": chosen, "candidates": summary, "hold": hold}


def _drift(
    settings: Any, registry: Any, run: Any, hold: Any, before: np.ndarray, card: Any
) -> dict[str, Any]:
    from distill_watchdog.loop.monitor.drift import Comparison, evidently_report
    from distill_watchdog.loop.monitor.reference import load_reference

    detail = orjson.loads(run.detail_json)
    drift: dict[str, Any] = {"cycle": detail.get("trigger_drift")}
    try:
        reference = load_reference(settings, registry, run.parent_version)
        if reference is not None:
            cfg = settings.monitor
            compared = Comparison(
                *reference,
                hold.x,
                before.argmax(1),
                cfg.drift_method,
                cfg.drift_threshold,
                card.feature_names,
            )
            drift["evidently"] = evidently_report(compared, Path(run.run_dir) / "drift.html")
    except Exception as exc:  # the report still stands without Evidently's page
        drift["evidently_error"] = f"{type(exc).__name__}: {exc}"
    return drift


def finish(settings: Any, run_id: str) -> dict[str, Any]:
    from distill_engine import metrics as M
    from distill_watchdog.registry import Registry
    from distill_watchdog.store import Store

    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(f"no run {run_id}")
    detail = orjson.loads(run.detail_json)
    run_dir = Path(run.run_dir)
    parent = registry.load(run.parent_version)
    weak = [w["slice"] for w in detail.get("trigger_numbers", {}).get("weak_slices", [])]
    # A policy run for the whole window (agreement, ECE or drift, no weak slice) must raise the
    # overall hold-out agreement: swapping students for no measured gain risks a loss in noise.
    gain_on = weak or (["all"] if run.trigger == "policy" else [])
    judged = _judge_all(settings, run_dir, parent, gain_on, store)
    chosen, hold = judged["chosen"], judged["hold"]
    result, gates = chosen["result"], chosen["gates"]
    _, before, after = chosen["sets"][0]
    target = hold.labels if hold.labels is not None else hold.teacher.argmax(1)
    reliability = {
        "before": M.reliability_bins(before, target),
        "after": M.reliability_bins(after, target),
        "against": "labels" if hold.labels is not None else "teacher",
    }
    report = {
        "run_id": run.id,
        "created_at": run.created_at,
        "trigger": run.trigger,
        "reason": detail.get("reason", ""),
        "trigger_numbers": detail.get("trigger_numbers", {}),
        "parent_version": run.parent_version,
        "drift": _drift(settings, registry, run, hold, before, chosen["card"]),
        "gates": {"passed": gates["passed"], "failed": gates["failed"], "gates": gates["gates"]},
        "slices": gates["tables"],
        "candidates": judged["candidates"],
        "chosen": chosen["name"],
        "reliability": reliability,
        "curation": result.get("curation", {}),
        "synthesis": result.get("synthesis"),
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
    return {"passed": gates["passed"], "verdict": report["stop"].get("verdict"), "chosen": chosen["name"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--run", required=True)
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from distill_watchdog.config import Settings

    with open(args.settings) as fh:
        settings = Settings(**json.load(fh))
    try:
        print(json.dumps(finish(settings, args.run)))
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
