"""Builds a redistillation job folder from stored samples.

- `train.npz`: the older rows (teacher outputs precomputed, feedback labels where present,
  weak slices' rows in the recent window up-weighted by `policy.weak_slice_weight`);
- `holdout.npz`: the newest `policy.holdout_share` of rows, never trained on: the engine's
  eval set and one of the gates' sets;
- `production.npz`: the newest `monitor.window` training rows, for production matching;
- `job.yaml`: `distill.job` defaults overlaid with data, curation and stop-rule inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from ..config import Settings
from ..monitor.reference import replay_rows
from ..monitor.window import Window, read_window
from ..registry import Registry
from ..store import Store
from .factories import trusted_student


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _save(
    path: Path,
    w: Window,
    idx: np.ndarray,
    weight: np.ndarray | None = None,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Writes rows `idx` of the window; `replay` rows (the parent's snapshot) are appended as `reference`."""
    x, probs = w.x[idx], w.teacher[idx]
    y, slices = w.labels[idx], w.slice_strings()[idx]
    if replay is not None and replay[0].shape[1] == x.shape[1] and replay[1].shape[1] == probs.shape[1]:
        n = len(replay[0])
        x = np.concatenate([x, replay[0]])
        probs = np.concatenate([probs, replay[1]])
        y = np.concatenate([y, np.full(n, -1, dtype=y.dtype)])
        slices = np.concatenate([slices.astype(str), np.full(n, "reference")])
        if weight is not None:
            weight = np.concatenate([weight, np.ones(n)])
    arrays: dict[str, Any] = {
        "x": x,
        "teacher_probs": probs / probs.sum(1, keepdims=True),
        "y": y,
        "slice": slices,
    }
    if weight is not None:
        arrays["weight"] = weight
    np.savez(path, **arrays)


def last_healthy_at(store: Store, lookback: int = 500) -> float | None:
    """Time of the newest policy decision that found nothing wrong (None: none in `lookback`)."""
    for d in store.recent_decisions(lookback):
        if not orjson.loads(d.numbers_json).get("breached", True):
            return float(d.at)
    return None


def _parent_student(card: Any) -> dict[str, Any] | None:
    """The active student's own factory and kwargs, from its card (None when it does not say)."""
    training = getattr(card, "training", None)
    student = training.get("student") if isinstance(training, dict) else None
    if not isinstance(student, dict) or not isinstance(student.get("factory"), str):
        return None
    return {"factory": student["factory"], "kwargs": dict(student.get("kwargs") or {})}


def build_job(
    settings: Settings,
    store: Store,
    registry: Registry,
    run_dir: Path,
    run_id: str,
    weak: list[str],
) -> dict[str, Any]:
    """Writes the job folder; returns what went into it (rows, weights, paths)."""
    cfg = settings.policy
    w = read_window(store, cfg.max_train_rows, {t.name: t.weight for t in settings.teachers})
    n = len(w)
    n_hold = int(round(n * cfg.holdout_share))
    if n - n_hold < 50 or n_hold < 10:
        raise ValueError(f"too few usable samples to redistill ({n}; need 60 or more)")
    order = np.argsort(w.at, kind="stable")
    train_idx, hold_idx = np.sort(order[: n - n_hold]), np.sort(order[n - n_hold :])
    # Up-weight the weak slices' rows since the loop last saw them healthy (at least those of the
    # recent window): that is where the monitor saw them fail; the same slice's older rows
    # describe the distribution before the change. A change is usually noticed a few cycles
    # late, so weighting only the last window would leave most of the new rows at weight 1.
    weight = np.ones(len(train_idx))
    recent = np.zeros(len(train_idx), dtype=bool)
    recent[-settings.monitor.window :] = True
    healthy_at = last_healthy_at(store)
    since = recent | (w.at[train_idx] > healthy_at) if healthy_at is not None else recent
    in_weak = np.zeros(len(train_idx), dtype=bool)
    for label in weak:
        in_weak |= w.mask(label)[train_idx]
    in_weak &= since
    weight[in_weak] *= cfg.weak_slice_weight
    run_dir.mkdir(parents=True, exist_ok=True)
    active = registry.active_version()
    if active is None:
        raise ValueError("no active student to improve on")
    replay = replay_rows(settings, active)
    _save(run_dir / "train.npz", w, train_idx, weight, replay)
    _save(run_dir / "holdout.npz", w, hold_idx)
    np.savez(run_dir / "production.npz", x=w.x[train_idx[recent]])

    info = registry.get(active)
    parent_onnx = registry.models_dir / f"{info.sha256}.onnx"
    parent_student, refused_factory = trusted_student(_parent_student(info.card), settings.distill)
    job = deep_merge(
        {
            "student": parent_student
            or {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [128, 128]}},
            "loss": {"temperature": 2.0, "kd_weight": 1.0},
            "train": {"epochs": 20, "batch_size": 256, "lr": 0.003, "device": "cpu"},
            "baseline": "none",
            "calibrate": True,
        },
        settings.distill.job,
    )
    job = deep_merge(
        job,
        {
            "name": info.name,
            "parent_version": active,
            "data": {"train": "train.npz", "eval": "holdout.npz"},
            "curation": {"dedupe": True, "match_production": "production.npz"},
            "stop": {"previous_model": str(parent_onnx.resolve()), "min_gain": cfg.min_gain},
            "classes": [str(c) for c in info.card.classes],
        },
    )
    if info.card.feature_names:
        job["feature_names"] = list(info.card.feature_names)
    # Warm start: the candidate begins as the active student and spends the round on what
    # changed (few rows of it) instead of relearning what it knew. Only for the parent's own
    # architecture; `distill.job` may choose another student, which then starts from scratch.
    same_arch = parent_student is not None and {k: job["student"].get(k) for k in ("factory", "kwargs")} == {
        k: parent_student.get(k) for k in ("factory", "kwargs")
    }
    warm = cfg.warm_start and same_arch and "init_from" not in settings.distill.job.get("student", {})
    if warm:
        job["student"]["init_from"] = str(parent_onnx.resolve())
    elif "init_from" not in settings.distill.job.get("student", {}):
        job["student"].pop("init_from", None)
    (run_dir / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return {
        "run_id": run_id,
        "rows": n,
        "train_rows": int(len(train_idx)),
        "holdout_rows": int(n_hold),
        "weak_rows": int(in_weak.sum()),
        "weak_slice_weight": cfg.weak_slice_weight,
        "replayed_reference_rows": 0 if replay is None else int(len(replay[0])),
        "weak_since": healthy_at,
        "warm_start": bool(warm),
        "student_source": "card" if parent_student else "refused" if refused_factory else "default",
        "teacher_versions": w.teacher_versions,
        "parent_version": active,
        "refused_factory": refused_factory,
    }


def launch_argv(settings: Settings, job: Path, out: Path, run_id: str) -> list[str]:
    """The command that trains: the engine in a child process, under torchrun, or a template."""
    import shlex
    import sys

    cfg = settings.distill
    if cfg.launcher == "command":
        if not cfg.command:
            raise ValueError("distill.command: required when distill.launcher is 'command'")
        text = cfg.command.format(job=job, out=out, run_id=run_id, python=sys.executable)
        return shlex.split(text)
    engine = ["-m", "distill_engine", "--job", str(job), "--out", str(out), "--progress", "none"]
    if cfg.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={cfg.nproc_per_node}",
            *engine,
        ]
    return [sys.executable, *engine]


def main() -> None:
    """`python -m distill_watchdog.jobs.build --settings FILE --run ID`: builds the run's job folder.

    A child process, because reading and parsing a large window of samples holds the GIL for
    seconds: in the serving process that would be felt as latency. Writes `build.json`.
    """
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--run", required=True)
    args = parser.parse_args()

    with open(args.settings) as fh:
        settings = Settings(**json.load(fh))
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)
    run = store.get_run(args.run)
    if run is None:
        print(f"no run {args.run}", file=sys.stderr)
        sys.exit(2)
    numbers = orjson.loads(run.detail_json).get("trigger_numbers", {})
    weak = [w["slice"] for w in numbers.get("weak_slices", [])]
    run_dir = Path(run.run_dir)
    try:
        built = build_job(settings, store, registry, run_dir, run.id, weak)
    except ValueError as exc:
        print(f"cannot build the job: {exc}", file=sys.stderr)
        sys.exit(2)
    (run_dir / "build.json").write_text(json.dumps(built, default=str))


if __name__ == "__main__":
    main()
