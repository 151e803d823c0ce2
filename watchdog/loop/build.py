"""Builds a redistillation job folder from stored samples.

- `train.npz`: the rows not held out (teacher outputs precomputed, feedback labels where
  present, weak slices' rows since they were last healthy up-weighted by
  `policy.weak_slice_weight`, and seeding synthesis);
- `holdout.npz`: `policy.holdout_share` of the recent rows, drawn per slice and time
  (`holdout.py`), never trained on: the engine's eval set and one of the gates' sets
  (`changed` marks weak slices' rows since the loop last saw them healthy: the gain gate's rows);
- `production.npz`: the newest `monitor.window` training rows, for production matching;
- `job.yaml`: `distill.job` defaults overlaid with data, curation and stop-rule inputs.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from distill_watchdog.config import Settings
from distill_watchdog.loop import holdout
from distill_watchdog.loop.factories import factory_allowed, trusted_student
from distill_watchdog.loop.monitor.reference import replay_rows
from distill_watchdog.loop.monitor.window import Window, read_window
from distill_watchdog.loop.policy import changed_after, healthy_since
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store

REPLAY_SLICE = "reference"  # the slice of the parent's snapshot rows appended to train.npz


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
    changed: np.ndarray | None = None,
) -> None:
    """Writes rows `idx` of the window; `replay` rows (the parent's snapshot) are appended as
    `reference`; `changed` marks the weak slices' changed rows (the hold-out's, for the gates)."""
    x, probs = w.x[idx], w.teacher[idx]
    y, slices = w.labels[idx], w.slice_strings()[idx]
    if replay is not None and replay[0].shape[1] == x.shape[1] and replay[1].shape[1] == probs.shape[1]:
        n = len(replay[0])
        x = np.concatenate([x, replay[0]])
        probs = np.concatenate([probs, replay[1]])
        y = np.concatenate([y, np.full(n, -1, dtype=y.dtype)])
        slices = np.concatenate([slices.astype(str), np.full(n, REPLAY_SLICE)])
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
    if changed is not None:
        arrays["changed"] = changed[idx]
    np.savez(path, **arrays)


def _parent_student(card: Any) -> dict[str, Any] | None:
    """The active student's own factory and kwargs, from its card (None when it does not say)."""
    training = getattr(card, "training", None)
    student = training.get("student") if isinstance(training, dict) else None
    if not isinstance(student, dict) or not isinstance(student.get("factory"), str):
        return None
    return {"factory": student["factory"], "kwargs": dict(student.get("kwargs") or {})}


def _weights(
    settings: Settings, store: Store, w: Window, weak: list[str], changed_from: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], float | None]:
    """Row weights, the recent rows, each weak slice's changed rows, and the earliest time a
    weak slice's changed rows begin.

    A weak slice's changed rows are its rows since its change began (`changed_from`, the
    cycle's change point), else since the newest decision that did not find it weak (with
    neither: its rows in the newest window): they show the problem, so they
    are up-weighted, seed synthesis, and judge the candidate's gain. Recent: the newest window
    and every changed row's time span; the hold-out is drawn from it.
    """
    window = np.zeros(len(w), dtype=bool)
    window[-settings.monitor.window :] = True
    healthy = healthy_since(store, weak)
    recent, changed = window.copy(), {}
    for label in weak:
        at = healthy[label] = changed_after(healthy[label], changed_from.get(label))
        since = w.at > at if at is not None else window
        changed[label] = w.mask(label) & since
        recent |= since
    weight = np.ones(len(w))
    for m in changed.values():
        weight[m] = settings.policy.weak_slice_weight
    known = [t for t in healthy.values() if t is not None]
    return weight, recent, changed, min(known) if known else None


def _job_spec(settings: Settings, registry: Registry, active: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine job (without data) and what the build says about it (warm start, factory)."""
    cfg = settings.policy
    info = registry.get(active)
    parent_onnx = registry.models_dir / f"{info.sha256}.onnx"
    parent_student, refused_factory = trusted_student(_parent_student(info.card), settings.distill)
    job = deep_merge(
        {
            "student": parent_student
            or {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [128, 128]}},
            "loss": {"temperature": 4.0, "kd_weight": 1.0},
            # The whole schedule, the last epoch kept: the engine's hold-out is mostly rows the
            # parent already fits; a weak slice's few changed rows hardly move its score, and it
            # would stop (or keep an early epoch) before they are learned.
            "train": {
                "epochs": 200,
                "patience": 0,
                "keep": "last",
                "batch_size": 256,
                "lr": 0.003,
                "device": "cpu",
            },
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
    job.pop("synthesis", None)  # policy.synthesis decides, and vets a user generator (`_synthesis`)
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
    about = {
        "warm_start": bool(warm),
        "student_source": "card" if parent_student else "refused" if refused_factory else "default",
        "refused_factory": refused_factory,
    }
    return job, about


TEACHER_OPTIONS = (
    "model_name",
    "input_name",
    "output_name",
    "output_kind",
    "headers",
    "request_template",
    "probabilities_path",
    "version_path",
    "version_header",
    "batch_size",
    "factory",
    "kwargs",
)


def _engine_teachers(settings: Settings) -> list[dict[str, Any]]:
    """The daemon's teachers as the engine's job names them (synthesis labels its rows with them)."""
    out = []
    for t in settings.teachers:
        local = t.kind in ("onnx", "torch")
        spec: dict[str, Any] = {
            "name": t.name,
            "kind": t.kind,
            "location": str(Path(t.location).resolve()) if local else t.location,
            "weight": t.weight,
            "slices": list(t.slices),
            "timeout_s": t.timeout_s,
        }
        spec.update({k: v for k, v in t.options.items() if k in TEACHER_OPTIONS})
        out.append(spec)
    return out


def _synthesis(
    settings: Settings, job: dict[str, Any], w: Window, train_idx: np.ndarray, weak: list[str]
) -> dict[str, Any] | None:
    """Turns on the engine's synthesis stage for the weak slices' training rows (policy.synthesis).

    Returns what the build says about it, or None when it is off, there is no weak slice, or
    the engine has no such stage. `distill.job.synthesis` overlays the settings; a user
    generator is allowed like a student factory.
    """
    from distill_engine.job import DistillJob

    if not settings.policy.synthesis or not weak or "synthesis" not in DistillJob.model_fields:
        return None
    present = {str(s) for s in w.slice_strings()[train_idx]}
    slices = sorted(s for s in present if any(label in s.split(",") for label in weak))
    # Seeds: the weak slices' changed rows, the ones up-weighted to policy.weak_slice_weight.
    heavier = settings.policy.weak_slice_weight
    seeds = {"min_seed_weight": heavier} if heavier > 1 else {}
    spec = deep_merge(
        {"enabled": True, "slices": slices, **seeds}, settings.distill.job.get("synthesis") or {}
    )
    about: dict[str, Any] = {"enabled": bool(spec.get("enabled")), "slices": spec.get("slices")}
    generator = spec.get("generator")
    if generator and not factory_allowed(str(generator), settings.distill.allowed_factories):
        spec.pop("generator")
        about["refused_generator"] = str(generator)[:200]
    job["synthesis"] = spec
    if spec.get("enabled") and not job.get("teachers"):
        job["teachers"] = _engine_teachers(settings)
    return about


def build_job(
    settings: Settings,
    store: Store,
    registry: Registry,
    run_dir: Path,
    run_id: str,
    weak: list[str],
    changed_from: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Writes the job folder; returns what went into it (rows, weights, paths). `changed_from`:
    per weak slice, when the cycle estimated its change began (the weak-slice entry's `from`).

    Raises WaitingForData when a weak slice has too few recent rows for both sides.
    """
    cfg = settings.policy
    active = registry.active_version()
    if active is None:
        raise ValueError("no active student to improve on")
    card = registry.get(active).card
    # Only rows the active student can take: rows of an earlier student with another shape stay
    # in the store until they age out, and must not fail the build meanwhile.
    w = read_window(
        store,
        cfg.max_train_rows,
        {t.name: t.weight for t in settings.teachers},
        features=card.num_features,
        classes=len(card.classes),
    )
    weight, recent, masks, healthy_at = _weights(settings, store, w, weak, changed_from or {})
    parts = holdout.split(
        w.at,
        w.slice_strings(),
        recent,
        masks,
        cfg.holdout_share,
        cfg.min_weak_train_rows,
        cfg.min_weak_holdout_rows,
        seed=zlib.crc32(run_id.encode()),
    )
    train_idx, hold_idx = parts.train, parts.hold
    if len(train_idx) < 50 or len(hold_idx) < 10:
        raise ValueError(
            f"too few usable samples to redistill ({len(w)}: {len(train_idx)} to train on, "
            f"{len(hold_idx)} held out; need 50 and 10)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    replay = replay_rows(settings, active)
    _save(run_dir / "train.npz", w, train_idx, weight[train_idx], replay)
    any_changed = np.zeros(len(w), dtype=bool)
    for m in masks.values():
        any_changed |= m
    _save(run_dir / "holdout.npz", w, hold_idx, changed=any_changed)
    np.savez(run_dir / "production.npz", x=w.x[train_idx[-settings.monitor.window :]])
    job, about = _job_spec(settings, registry, active)
    if replay is not None:
        # Replayed rows are rehearsal of what the parent learned, not today's traffic; held out
        # they would score the parent's own weights best and early stopping would keep them.
        calibrate = job.get("calibrate", True)
        calibrate = dict(calibrate) if isinstance(calibrate, dict) else {"enabled": bool(calibrate)}
        calibrate["exclude_slices"] = sorted({*calibrate.get("exclude_slices", []), REPLAY_SLICE})
        job["calibrate"] = calibrate
    about["synthesis"] = _synthesis(settings, job, w, train_idx, weak)
    (run_dir / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return {
        "run_id": run_id,
        "rows": len(w),
        "train_rows": int(len(train_idx)),
        "holdout_rows": int(len(hold_idx)),
        "holdout": "stratified by slice and time, from the recent rows",
        "weak_counts": parts.weak_counts,
        "weak_rows": int(sum(c["train"] for c in parts.weak_counts.values())),
        "weak_slice_weight": cfg.weak_slice_weight,
        "replayed_reference_rows": 0 if replay is None else int(len(replay[0])),
        "weak_since": healthy_at,
        "teacher_versions": w.teacher_versions,
        "parent_version": active,
        **about,
    }


WAITING_EXIT = 3  # the build found too few weak-slice rows: the run waits for data, it did not fail


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


def child_args() -> tuple[Settings, str]:
    """`--settings FILE --run ID` of a run's child process: the settings and the run id."""
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--run", required=True)
    args = parser.parse_args()
    with open(args.settings) as fh:
        return Settings(**json.load(fh)), args.run


def main() -> None:
    """`python -m distill_watchdog.loop.build --settings FILE --run ID`: builds the run's job folder.

    A child process, because reading and parsing a large window of samples holds the GIL for
    seconds: in the serving process that would be felt as latency. Writes `build.json`.
    """
    import json
    import sys

    settings, run_id = child_args()
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)
    run = store.get_run(run_id)
    if run is None:
        print(f"no run {run_id}", file=sys.stderr)
        sys.exit(2)
    numbers = orjson.loads(run.detail_json).get("trigger_numbers", {})
    entries = numbers.get("weak_slices", [])
    weak = [w["slice"] for w in entries]
    changed_from = {w["slice"]: float(w["from"]) for w in entries if w.get("from") is not None}
    run_dir = Path(run.run_dir)
    try:
        built = build_job(settings, store, registry, run_dir, run.id, weak, changed_from)
    except holdout.WaitingForData as exc:
        (run_dir / "waiting.json").write_text(json.dumps({"rows": exc.counts, "need": exc.need}))
        print(str(exc), file=sys.stderr)
        sys.exit(WAITING_EXIT)
    except ValueError as exc:
        print(f"cannot build the job: {exc}", file=sys.stderr)
        sys.exit(2)
    (run_dir / "build.json").write_text(json.dumps(built, default=str))


if __name__ == "__main__":
    main()
