"""Teacher outputs for the job's rows: precomputed in the npz, or asked of the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Table
from .ensemble import route
from .errors import JobError, TeacherError
from .job import DistillJob
from .progress import Progress
from .teachers import Teacher, make_teacher, predict_all


@dataclass
class TeacherOutputs:
    """Teacher outputs for train and eval rows, and what produced them."""

    train_probs: np.ndarray
    eval_probs: np.ndarray
    train_versions: np.ndarray
    params: dict[str, int | None]
    versions: dict[str, str]
    adapters: dict[str, Teacher]


def open_teachers(job: DistillJob) -> dict[str, Teacher]:
    """One adapter per teacher (cheap: sessions and clients open on first use); close them after."""
    base = Path(job.base_dir) if job.base_dir else None
    return {t.name: make_teacher(t, base) for t in job.teachers}


def teacher_outputs(
    job: DistillJob, train: Table, ev: Table, adapters: dict[str, Teacher], progress: Progress
) -> TeacherOutputs:
    """Precomputed outputs when the npz carry them, else call the teachers."""
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
    return TeacherOutputs(train_probs, eval_probs, train_versions, params, versions, adapters)


def hint_targets(job: DistillJob, train: Table, adapters: dict[str, Teacher]) -> list[np.ndarray]:
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
