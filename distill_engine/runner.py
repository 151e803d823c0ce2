"""`run(job, out_dir)`: teachers → curation → (assistants) → student → calibration → export → report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics as M
from .calibration import apply_temperature, fit_temperature
from .curation import curate
from .data import Table, load_table
from .dist import DistContext, barrier, setup, teardown
from .ensemble import route
from .errors import JobError, TeacherError
from .export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_logits, parity
from .job import DistillJob, FactorySpec, LossSpec, load_job
from .progress import CancelToken, Progress, ProgressCallback
from .stop import stop_verdict
from .teachers import Teacher, make_teacher, predict_all
from .train import make_data, predict_logits, train_model
from .warm import load_onnx_weights
from .zoo import build_model, count_params


@dataclass
class DistillResult:
    """What a run produced: file paths plus the parsed result.json and card.json."""

    out_dir: Path
    result: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True

    @property
    def onnx_path(self) -> Path:
        return self.out_dir / "student.onnx"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"

    @property
    def verdict(self) -> str:
        return str(self.result.get("stop", {}).get("verdict", ""))


@dataclass
class _Teachers:
    """Teacher outputs for train and eval rows, and what produced them."""

    train_probs: np.ndarray
    eval_probs: np.ndarray
    train_versions: np.ndarray
    params: dict[str, int | None]
    versions: dict[str, str]
    adapters: dict[str, Teacher]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _teacher_outputs(job: DistillJob, train: Table, ev: Table, progress: Progress) -> _Teachers:
    """Precomputed outputs when the npz carry them, else call the teachers."""
    base = Path(job.base_dir) if job.base_dir else None
    adapters = {t.name: make_teacher(t, base) for t in job.teachers}
    specs = {t.name: t for t in job.teachers}
    params: dict[str, int | None] = {}
    versions: dict[str, str] = {}

    def outputs(table: Table, which: str) -> tuple[np.ndarray, np.ndarray]:
        if table.teacher_probs is not None:
            v = (
                table.teacher_version
                if table.teacher_version is not None
                else np.full(len(table), "precomputed", dtype=object)
            )
            return table.teacher_probs, v
        if not job.teachers:
            raise JobError("teachers", f"no teachers given and data.{which} has no 'teacher_probs'")
        per: dict[str, np.ndarray] = {}
        ver_rows: dict[str, np.ndarray] = {}
        for name, spec in specs.items():
            if name in table.teacher_probs_by_name:
                per[name] = table.teacher_probs_by_name[name]
                ver_rows[name] = np.full(len(table), spec.version or "precomputed", dtype=object)
                continue
            progress.emit("teacher", teacher=name, rows=len(table), split=which)
            try:
                out, v = predict_all(adapters[name], table.x)
            except TeacherError as e:
                raise JobError(f"teachers.{name}", str(e)) from None
            per[name] = out.probs
            ver_rows[name] = v
            versions[name] = out.version
        widths = {p.shape[1] for p in per.values()}
        if len(widths) != 1:
            raise JobError("teachers", f"teachers disagree on the number of classes: {sorted(widths)}")
        combined, _ = route(per, job.teachers, table.slices, job.loss.ensemble)
        joined = (
            np.array(
                ["+".join(f"{n}@{ver_rows[n][i]}" for n in per) for i in range(len(table))], dtype=object
            )
            if len(per) > 1
            else ver_rows[next(iter(per))]
        )
        return combined, joined

    train_probs, train_versions = outputs(train, "train")
    eval_probs, _ = outputs(ev, "eval")
    for name, ad in adapters.items():
        try:
            params[name] = ad.num_params()
        except (TeacherError, OSError, RuntimeError):
            params[name] = None
    if train_probs.shape[1] != eval_probs.shape[1]:
        raise JobError(
            "data.eval",
            f"teacher gives {eval_probs.shape[1]} classes on eval vs {train_probs.shape[1]} on train",
        )
    return _Teachers(train_probs, eval_probs, train_versions, params, versions, adapters)


def _hint_targets(job: DistillJob, train: Table, adapters: dict[str, Teacher]) -> list[np.ndarray]:
    if not job.loss.hints:
        return []
    out = []
    for i, h in enumerate(job.loss.hints):
        name = h.teacher_name or (job.teachers[0].name if job.teachers else None)
        if name is None or name not in adapters:
            raise JobError(f"loss.hints.{i}.teacher_name", "hints need a local (onnx/torch) teacher")
        try:
            res, _ = predict_all(adapters[name], train.x, intermediates=[h.teacher])
        except TeacherError as e:
            raise JobError(f"loss.hints.{i}.teacher", str(e)) from None
        out.append(res.intermediates[h.teacher])
    return out


def _evaluate(
    logits: np.ndarray,
    temperature: float,
    labels: np.ndarray | None,
    teacher: np.ndarray,
    slices: np.ndarray | None,
) -> dict[str, Any]:
    """Metric block (+ per slice) of calibrated probabilities, and the uncalibrated block."""
    raw = M.softmax(logits)
    cal = apply_temperature(logits, temperature)
    return {
        "calibrated": _block(cal, labels, teacher, slices),
        "uncalibrated": _block(raw, labels, teacher, slices),
    }


def _block(
    probs: np.ndarray, labels: np.ndarray | None, teacher: np.ndarray, slices: np.ndarray | None
) -> dict[str, Any]:
    out: dict[str, Any] = M.summary(probs, labels, teacher)
    if slices is not None:
        out["slices"] = {
            str(s): M.summary(probs[m], None if labels is None else labels[m], teacher[m])
            for s in sorted(np.unique(slices))
            for m in [slices == s]
        }
    return out


def _labels_or_none(t: Table) -> np.ndarray | None:
    """Eval labels when every row has one (metrics against labels need all of them)."""
    return t.y if t.y is not None and bool((t.y >= 0).all()) else None


def _fit_t(logits: np.ndarray, labels: np.ndarray | None, teacher: np.ndarray) -> tuple[float, str]:
    if labels is not None and len(labels) and bool((labels >= 0).all()):
        return fit_temperature(logits, labels), "labels"
    return fit_temperature(logits, teacher), "teacher_probs"


def _json_safe(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_safe(v) for v in o]
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, float | np.floating):
        f = float(o)
        return f if np.isfinite(f) else None
    return o


def run(
    job: DistillJob,
    out_dir: str | Path,
    progress: ProgressCallback | str | None = None,
    cancel: CancelToken = None,
) -> DistillResult:
    """Run one distillation job and write student.onnx, card.json, result.json, report.html."""
    t0 = time.perf_counter()
    ctx = setup(job.train.device)
    try:
        return _run(job, Path(out_dir), Progress(progress, cancel=cancel, enabled=ctx.is_main), ctx, t0)
    finally:
        teardown(ctx)


def _run(job: DistillJob, out: Path, progress: Progress, ctx: DistContext, t0: float) -> DistillResult:
    seed = job.train.seed
    train = load_table(job.resolve(job.data.train), "data.train")
    ev = load_table(job.resolve(job.data.eval), "data.eval")
    if train.x.shape[1] != ev.x.shape[1]:
        raise JobError("data.eval", f"x has {ev.x.shape[1]} features, data.train has {train.x.shape[1]}")
    num_features = train.x.shape[1]
    progress.emit("start", name=job.name, train_rows=len(train), eval_rows=len(ev), world_size=ctx.world_size)

    teach = _teacher_outputs(job, train, ev, progress)
    num_classes = teach.train_probs.shape[1]
    classes = job.classes or [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise JobError("classes", f"{len(classes)} names for {num_classes} teacher classes")
    for name, t in (("data.train", train), ("data.eval", ev)):
        if t.y is not None and t.y.max(initial=-1) >= num_classes:
            raise JobError(f"{name}.y", f"label {int(t.y.max())} outside the teacher's {num_classes} classes")
    hint_targets = _hint_targets(job, train, teach.adapters)

    production = None
    if job.curation.match_production is not None:
        production = load_table(
            job.resolve(job.curation.match_production.path), "curation.match_production"
        ).x
        if production.shape[1] != num_features:
            raise JobError(
                "curation.match_production", f"x has {production.shape[1]} features, not {num_features}"
            )
    cur = curate(
        train.x,
        teach.train_probs,
        job.curation,
        train.slices,
        teach.train_versions,
        train.weight,
        production,
        seed,
    )
    if cur.counts["kept"] < 10:
        raise JobError("curation", f"only {cur.counts['kept']} training rows left after curation")
    progress.emit("curation", **{k: v for k, v in cur.counts.items() if not isinstance(v, dict)})

    # Calibration hold-out: a seeded share of the curated rows, never trained on.
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(cur.keep))
    n_hold = int(round(len(perm) * job.calibrate.holdout)) if job.calibrate.enabled else 0
    hold_pos, fit_pos = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    fit_idx, hold_idx = cur.keep[fit_pos], cur.keep[hold_pos]
    y_fit = train.y[fit_idx] if train.y is not None else None
    hints_fit = [h[fit_idx] for h in hint_targets]
    teacher_fit = teach.train_probs[fit_idx]
    weights_fit = cur.weights[fit_pos]
    ev_labels = _labels_or_none(ev)

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        p = M.softmax(predict_logits(model, ev.x))
        rec = {"eval_agreement": M.agreement(p, teach.eval_probs)}
        if ev_labels is not None:
            rec["eval_accuracy"] = M.accuracy(p, ev_labels)
        return rec

    common = dict(
        batch_size=job.train.batch_size,
        lr=job.train.lr,
        weight_decay=job.train.weight_decay,
        ctx=ctx,
        progress=progress,
        num_features=num_features,
    )
    curves: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    current_teacher_fit = teacher_fit
    current_teacher_all = teach.train_probs
    out.mkdir(parents=True, exist_ok=True)
    for i, stage in enumerate(job.stages):
        _seed_all(seed + 1000 * (i + 1))
        assistant = build_model(
            stage.student.factory, stage.student.kwargs, num_features, num_classes, f"stages.{i}.student"
        )
        if stage.student.init_from:
            load_onnx_weights(
                assistant,
                job.resolve(stage.student.init_from),
                num_features,
                f"stages.{i}.student.init_from",
                probe=ev.x,
            )
        st0 = time.perf_counter()
        curves += train_model(
            assistant,
            make_data(train.x[fit_idx], current_teacher_fit, y_fit, weights_fit),
            job.loss,
            epochs=stage.epochs or job.train.epochs,
            seed=seed + i + 1,
            phase=f"assistant{i}",
            eval_fn=eval_fn,
            **common,
        )
        assistant.cpu()
        a_logits_eval = predict_logits(assistant, ev.x)
        a_t, _ = (
            _fit_t(
                predict_logits(assistant, train.x[hold_idx]),
                None if train.y is None else train.y[hold_idx],
                teach.train_probs[hold_idx],
            )
            if n_hold
            else (1.0, "none")
        )
        rec = {
            "index": i,
            "factory": stage.student.factory,
            "kwargs": stage.student.kwargs,
            "params": count_params(assistant),
            "temperature": a_t,
            "seconds": time.perf_counter() - st0,
            "eval": _evaluate(a_logits_eval, a_t, ev_labels, teach.eval_probs, None)["calibrated"],
        }
        if ctx.is_main:
            path = export_onnx(
                assistant, num_features, out / f"assistant{i}.onnx", job.export.dynamo, job.export.opset
            )
            rec["onnx"] = path.name
        stages.append(rec)
        # The assistant teaches the next stage with its own (uncalibrated) probabilities.
        current_teacher_all = M.softmax(predict_logits(assistant, train.x))
        current_teacher_fit = current_teacher_all[fit_idx]

    _seed_all(seed)
    student = build_model(job.student.factory, job.student.kwargs, num_features, num_classes, "student")
    warm_start = (
        load_onnx_weights(student, job.resolve(job.student.init_from), num_features, probe=ev.x)
        if job.student.init_from
        else None
    )
    hint_epochs = (
        job.loss.hint_epochs
        if job.loss.hint_epochs is not None
        else (max(1, job.train.epochs // 4) if job.loss.hints else 0)
    )
    st0 = time.perf_counter()
    curves += train_model(
        student,
        make_data(train.x[fit_idx], current_teacher_fit, y_fit, weights_fit, hints_fit),
        job.loss,
        epochs=job.train.epochs,
        seed=seed,
        phase="student",
        hints=job.loss.hints,
        hint_epochs=hint_epochs,
        eval_fn=eval_fn,
        **common,
    )
    student_seconds = time.perf_counter() - st0
    student.cpu()

    baseline_info = _baseline(
        job, train, ev, ev_labels, teach, num_features, num_classes, common, eval_fn, fit_idx, hold_idx
    )
    barrier(ctx)
    if not ctx.is_main:
        return DistillResult(out, is_main=False)

    # Temperature on the hold-out (labels where all present, else the teacher's soft targets).
    hold_logits = predict_logits(student, train.x[hold_idx])
    if n_hold:
        temperature, t_target = _fit_t(
            hold_logits, None if train.y is None else train.y[hold_idx], teach.train_probs[hold_idx]
        )
    else:
        temperature, t_target = 1.0, "none"
    ev_logits = predict_logits(student, ev.x)
    student_eval = _evaluate(ev_logits, temperature, ev_labels, teach.eval_probs, ev.slices)
    teacher_eval = _block(teach.eval_probs, ev_labels, teach.eval_probs, ev.slices)
    hold_block = None
    if n_hold:
        tgt = train.y[hold_idx] if train.y is not None and (train.y[hold_idx] >= 0).all() else None
        hold_block = {
            "before": M.summary(M.softmax(hold_logits), tgt, teach.train_probs[hold_idx]),
            "after": M.summary(apply_temperature(hold_logits, temperature), tgt, teach.train_probs[hold_idx]),
        }

    sample = fit_idx[np.random.default_rng(seed).permutation(len(fit_idx))[:20000]]
    train_agree = M.agreement(M.softmax(predict_logits(student, train.x[sample])), teach.train_probs[sample])
    previous = None
    if job.stop.previous_model:
        prev_path = job.resolve(job.stop.previous_model)
        if not prev_path.exists():
            raise JobError("stop.previous_model", f"file not found: {prev_path}")
        previous = M.softmax(onnx_logits(prev_path, ev.x))
    stop = stop_verdict(
        job.stop,
        apply_temperature(ev_logits, temperature),
        teach.eval_probs,
        ev_labels,
        train_agree,
        previous,
        seed,
    )

    export_t0 = time.perf_counter()
    onnx_path = export_onnx(student, num_features, out / "student.onnx", job.export.dynamo, job.export.opset)
    par = parity(student, onnx_path, ev.x[:4096], temperature, job.export.parity_tolerance)
    par["seconds"] = time.perf_counter() - export_t0
    par["exporter"] = "dynamo" if job.export.dynamo else "torchscript"

    import hashlib

    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    version = job.version or digest[:12]
    wall = time.perf_counter() - t0
    training_block = {
        "job": job.name,
        "seed": seed,
        "epochs": job.train.epochs,
        "batch_size": job.train.batch_size,
        "lr": job.train.lr,
        "loss": job.loss.model_dump(mode="json"),
        "teachers": teach.versions or None,
        "train_rows": int(len(fit_idx)),
        "holdout_rows": int(len(hold_idx)),
        "world_size": ctx.world_size,
        "student": job.student.model_dump(mode="json"),
        "onnx_sha256": digest,
    }
    card = {
        "name": job.name,
        "version": version,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "num_features": num_features,
        "classes": classes,
        "output_kind": "logits",
        "temperature": temperature,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": training_block,
    }
    if job.feature_names:
        card["feature_names"] = job.feature_names
    if job.parent_version:
        card["parent_version"] = job.parent_version
    teacher_params = {k: v for k, v in teach.params.items()}
    known = [v for v in teacher_params.values() if v is not None]
    result = {
        "name": job.name,
        "version": version,
        "teacher": teacher_eval,
        "student": student_eval["calibrated"],
        "student_uncalibrated": student_eval["uncalibrated"],
        "baseline": baseline_info,
        "temperature": temperature,
        "temperature_fitted_on": t_target,
        "calibration_holdout": hold_block,
        "curation": cur.counts,
        "stages": stages,
        "stop": stop,
        "onnx_parity": par,
        "params": {
            "teacher": sum(known) if known else None,
            "teachers": teacher_params,
            "student": count_params(student),
            "assistants": [s["params"] for s in stages],
        },
        "teacher_versions": teach.versions,
        "world_size": ctx.world_size,
        "seconds": {"student_training": student_seconds},
        "wall_seconds": wall,
        "curves": curves,
        "classes": classes,
        "train_agreement": train_agree,
        "init_from": warm_start,
    }
    result = _json_safe(result)
    card = _json_safe(card)
    (out / "card.json").write_text(json.dumps(card, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2))
    from .report import render_report

    reliability = {
        "student (after scaling)": M.reliability_bins(
            apply_temperature(ev_logits, temperature),
            ev_labels if ev_labels is not None else teach.eval_probs.argmax(1),
        ),
        "student (before scaling)": M.reliability_bins(
            M.softmax(ev_logits), ev_labels if ev_labels is not None else teach.eval_probs.argmax(1)
        ),
    }
    if ev_labels is not None:
        reliability["teacher"] = M.reliability_bins(teach.eval_probs, ev_labels)
    (out / "report.html").write_text(render_report(result, card, reliability))
    for ad in teach.adapters.values():
        ad.close()
    progress.emit("done", wall_seconds=wall, verdict=stop["verdict"])
    progress.close()
    return DistillResult(out, result, card)


def _baseline(
    job: DistillJob,
    train: Table,
    ev: Table,
    ev_labels: np.ndarray | None,
    teach: _Teachers,
    num_features: int,
    num_classes: int,
    common: dict[str, Any],
    eval_fn: Any,
    fit_idx: np.ndarray,
    hold_idx: np.ndarray,
) -> dict[str, Any] | None:
    """Same architecture trained on labels only (the floor KD must beat); None when no labels."""
    if job.baseline.mode == "none":
        return None
    if job.baseline.data:
        table = load_table(job.resolve(job.baseline.data), "baseline.data")
        if table.x.shape[1] != num_features:
            raise JobError("baseline.data", f"x has {table.x.shape[1]} features, not {num_features}")
        labelled = np.flatnonzero(table.labelled)
        rng = np.random.default_rng(job.train.seed)
        labelled = rng.permutation(labelled)
        n_hold = int(round(len(labelled) * job.calibrate.holdout)) if job.calibrate.enabled else 0
        b_fit, b_hold = np.sort(labelled[n_hold:]), np.sort(labelled[:n_hold])
    else:
        table = train
        b_fit = fit_idx[train.labelled[fit_idx]]
        b_hold = hold_idx[train.labelled[hold_idx]]
    if len(b_fit) == 0:
        if job.baseline.mode == "labels":
            raise JobError("baseline", "mode 'labels' needs labelled training rows (y >= 0)")
        return None
    _seed_all(job.train.seed)
    model = build_model(job.student.factory, job.student.kwargs, num_features, num_classes, "student")
    bt0 = time.perf_counter()
    assert table.y is not None
    curves = train_model(
        model,
        make_data(table.x[b_fit], None, table.y[b_fit]),
        LossSpec(kd_weight=0.0),
        epochs=job.train.epochs,
        seed=job.train.seed,
        phase="baseline",
        eval_fn=eval_fn,
        **common,
    )
    model.cpu()
    seconds = time.perf_counter() - bt0
    t, _ = (
        (fit_temperature(predict_logits(model, table.x[b_hold]), table.y[b_hold]), "labels")
        if len(b_hold)
        else (1.0, "none")
    )
    res = _evaluate(predict_logits(model, ev.x), t, ev_labels, teach.eval_probs, ev.slices)
    return {
        **res["calibrated"],
        "uncalibrated": res["uncalibrated"],
        "temperature": t,
        "train_rows": int(len(b_fit)),
        "seconds": seconds,
        "final_epoch": curves[-1] if curves else None,
        "student": FactorySpec.model_validate(job.student.model_dump()).model_dump(mode="json"),
    }


def run_job_file(
    job_path: str | Path,
    out_dir: str | Path,
    progress: ProgressCallback | str | None = None,
    cancel: CancelToken = None,
) -> DistillResult:
    """Load a JOB.yaml and run it; the daemon's `distill` command calls this."""
    return run(load_job(job_path), out_dir, progress=progress, cancel=cancel)
