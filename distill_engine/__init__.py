"""distill_engine: knowledge distillation from one or more teachers into a small ONNX student.

A library with no knowledge of the daemon: a `DistillJob` goes in, a `DistillResult`
(student.onnx, card.json, result.json, report.html) comes out.
"""

from __future__ import annotations

from .errors import Cancelled, DistillError, JobError, TeacherError
from .job import DistillJob, load_job, parse_job
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
