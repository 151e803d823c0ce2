"""distill_engine: knowledge distillation from one or more teachers into a small ONNX student.

A library with no knowledge of the daemon: a `DistillJob` goes in, a `DistillResult`
(student.onnx, card.json, result.json, report.html) comes out. `run`, `run_job_file` and
`DistillResult` load lazily so `distill_engine.metrics` and job validation do not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Cancelled, DistillError, JobError, TeacherError
from .job import DistillJob, load_job, parse_job

if TYPE_CHECKING:
    from .runner import DistillResult, run, run_job_file

__all__ = [
    "Cancelled",
    "DistillError",
    "DistillJob",
    "DistillResult",
    "JobError",
    "TeacherError",
    "load_job",
    "parse_job",
    "run",
    "run_job_file",
]


def __getattr__(name: str) -> Any:
    if name in ("run", "run_job_file", "DistillResult"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'distill_engine' has no attribute {name!r}")
