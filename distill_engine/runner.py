"""`run(job, out_dir)`: data → teachers → curation and hold-out → (assistants) → student and
baseline → selection → calibration → stop rule → export → card → report.

Each stage is a function of the run's state (`RunState`); teacher adapters are closed in
`finally` whatever happens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics as M
from .baseline import choose_model, train_baseline
from .curation import curate
from .data import Table, load_table
from .dist import DistContext, barrier, setup, teardown
from .errors import JobError
from .holdout import strata_of, stratified_split
from .job import DistillJob, load_job
from .outputs import write_outputs
from .progress import CancelToken, Progress, ProgressCallback
from .scoring import block
from .stages import train_assistants
from .state import RunState, holdout_data, seed_all
from .stopping import stop_block
from .synthesis import synthesize
from .teachers import Teacher
from .teaching import hint_targets, open_teachers, teacher_outputs
from .train import TrainData, TrainRun, make_data, predict_logits, train_model
from .warm import load_onnx_weights
from .zoo import build_model


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

    @property
    def selected(self) -> str:
        return str(self.result.get("selected", {}).get("model", "distilled"))


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


def _load_tables(job: DistillJob) -> tuple[Table, Table]:
    train = load_table(job.resolve(job.data.train), "data.train")
    ev = load_table(job.resolve(job.data.eval), "data.eval")
    if train.x.shape[1] != ev.x.shape[1]:
        raise JobError("data.eval", f"x has {ev.x.shape[1]} features, data.train has {train.x.shape[1]}")
    return train, ev


def _check_classes(st: RunState) -> list[str]:
    st.num_classes = int(st.teach.train_probs.shape[1])
    classes = st.job.classes or [str(i) for i in range(st.num_classes)]
    if len(classes) != st.num_classes:
        raise JobError("classes", f"{len(classes)} names for {st.num_classes} teacher classes")
    for name, t in (("data.train", st.train), ("data.eval", st.ev)):
        if t.y is not None and t.y.max(initial=-1) >= st.num_classes:
            raise JobError(
                f"{name}.y", f"label {int(t.y.max())} outside the teacher's {st.num_classes} classes"
            )
    return classes


def _run(job: DistillJob, out: Path, progress: Progress, ctx: DistContext, t0: float) -> DistillResult:
    train, ev = _load_tables(job)
    progress.emit("start", name=job.name, train_rows=len(train), eval_rows=len(ev), world_size=ctx.world_size)
    adapters = open_teachers(job)
    try:
        teach = teacher_outputs(job, train, ev, adapters, progress)
        st = RunState(job, out, progress, ctx, t0, train, ev, teach)
        classes = _check_classes(st)
        st.hints = hint_targets(job, train, adapters)
        _curate_and_split(st)
        out.mkdir(parents=True, exist_ok=True)
        if job.synthesis.enabled:
            _synthesize(st, adapters)
        stages, teacher_all = train_assistants(st)
        student, student_run, seconds = _train_student(st, teacher_all)
        if st.synth is not None and job.synthesis.ablate:
            _ablation(st, teacher_all)
        baseline = train_baseline(st)
        choice = choose_model(st, student, baseline)
        stop = stop_block(st, student, student_run, choice.model)
        barrier(ctx)
        if not ctx.is_main:
            return DistillResult(out, is_main=False)
        result, card = write_outputs(
            st, choice, student, student_run, baseline, stop, stages, classes, seconds
        )
    finally:
        for ad in adapters.values():
            ad.close()
    progress.emit(
        "done",
        wall_seconds=result["wall_seconds"],
        verdict=stop["verdict"],
        selected=result["selected"]["model"],
    )
    progress.close()
    return DistillResult(out, result, card)


def _curate_and_split(st: RunState) -> None:
    """Curation, then the stratified hold-out (early stopping + temperature) from the kept rows."""
    job = st.job
    production = None
    if job.curation.match_production is not None:
        production = load_table(
            job.resolve(job.curation.match_production.path), "curation.match_production"
        ).x
        if production.shape[1] != st.num_features:
            raise JobError(
                "curation.match_production", f"x has {production.shape[1]} features, not {st.num_features}"
            )
    cur = curate(
        st.train.x, st.teach.train_probs, job.curation, st.train.slices,
        st.teach.train_versions, st.train.weight, production, job.train.seed,
    )  # fmt: skip
    if cur.counts["kept"] < 10:
        raise JobError("curation", f"only {cur.counts['kept']} training rows left after curation")
    st.progress.emit("curation", **{k: v for k, v in cur.counts.items() if not isinstance(v, dict)})
    fit_pos, hold_pos = np.arange(len(cur.keep)), np.zeros(0, dtype=np.int64)
    if job.calibrate.enabled or job.train.patience > 0:
        fit_pos, hold_pos = _holdout_split(st, cur.keep)
    st.cur, st.production = cur, production
    st.fit_idx, st.hold_idx = cur.keep[fit_pos], cur.keep[hold_pos]
    st.weights_fit = cur.weights[fit_pos]
    st.hints = [h[st.fit_idx] for h in st.hints]


def _holdout_split(st: RunState, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (fit, hold) of the curated rows: a stratified hold-out drawn only from rows
    outside `calibrate.exclude_slices` (rows the parent trained on would score its own weights
    best, and early stopping would keep the first epoch)."""
    job = st.job
    classes = st.teach.train_probs[keep].argmax(1)
    slices = None if st.train.slices is None else st.train.slices[keep]
    eligible = np.ones(len(keep), dtype=bool)
    if slices is not None and job.calibrate.exclude_slices:
        eligible = ~np.isin(np.asarray(slices).astype(str), job.calibrate.exclude_slices)
    pos = np.flatnonzero(eligible)
    fit, hold = stratified_split(
        strata_of(classes[pos], None if slices is None else slices[pos]),
        job.calibrate.holdout, job.calibrate.min_holdout_rows, job.train.seed,
    )  # fmt: skip
    return np.sort(np.concatenate([pos[fit], np.flatnonzero(~eligible)])), pos[hold]


def _synthesize(st: RunState, adapters: dict[str, Teacher]) -> None:
    """Synthetic rows from the training rows only: the hold-out and eval never see them."""
    slices = None if st.train.slices is None else st.train.slices[st.fit_idx]
    weights = None if st.train.weight is None else st.train.weight[st.fit_idx]
    st.synth = synthesize(
        st.job, adapters, st.train.x[st.fit_idx], slices, st.production, st.job.train.seed, weights
    )
    st.progress.emit("synthesis", rows=len(st.synth), teacher_calls=st.synth.teacher_calls)


def _student_data(st: RunState, teacher_all: np.ndarray, synthetic: bool) -> TrainData:
    """The curated training rows, plus the kept synthetic rows (no labels, lower weight) when asked."""
    x, p = st.train.x[st.fit_idx], teacher_all[st.fit_idx]
    y = st.labels(st.fit_idx)
    w, hints = st.weights_fit, st.hints
    if synthetic and st.synth is not None and len(st.synth):
        s = st.synth
        x, p, w = np.concatenate([x, s.x]), np.concatenate([p, s.probs]), np.concatenate([w, s.weights])
        y = None if y is None else np.concatenate([y, np.full(len(s), -1)])
    return make_data(x, p, y, w, hints)


def _ablation(st: RunState, teacher_all: np.ndarray) -> None:
    """The same student trained without synthetic rows: its eval metrics beside the real one's."""
    model, run_, _ = _train_student(st, teacher_all, synthetic=False)
    probs = M.softmax(predict_logits(model, st.ev.x))
    st.ablation = {
        "without_synthesis": block(probs, st.ev_labels, st.teach.eval_probs, st.ev.slices),
        "training": run_.summary(),
    }


def _train_student(
    st: RunState, teacher_all: np.ndarray, synthetic: bool = True
) -> tuple[torch.nn.Module, TrainRun, float]:
    job = st.job
    seed_all(job.train.seed)
    student = build_model(job.student.factory, job.student.kwargs, st.num_features, st.num_classes, "student")
    if job.student.init_from:
        st.warm_start = load_onnx_weights(
            student, job.resolve(job.student.init_from), st.num_features, probe=st.ev.x, grow=True
        )
    hint_epochs = (
        job.loss.hint_epochs
        if job.loss.hint_epochs is not None
        else (max(1, job.train.epochs // 4) if job.loss.hints else 0)
    )
    t0 = time.perf_counter()
    data = _student_data(st, teacher_all, synthetic)
    run_ = train_model(
        student, data, job.loss, job.train, phase="student" if synthetic else "student:no_synthesis",
        val=holdout_data(st, teacher_all),
        hints=job.loss.hints, hint_epochs=hint_epochs, eval_fn=st.eval_fn, **st.common(),
    )  # fmt: skip
    st.curves += run_.curves
    student.cpu()
    return student, run_, time.perf_counter() - t0


def run_job_file(
    job_path: str | Path,
    out_dir: str | Path,
    progress: ProgressCallback | str | None = None,
    cancel: CancelToken = None,
) -> DistillResult:
    """Load a JOB.yaml and run it; the daemon's `distill` command calls this."""
    return run(load_job(job_path), out_dir, progress=progress, cancel=cancel)
