"""Per-slice sampling of live traffic, the bounded queue, and the teacher worker."""

from distill_watchdog.shadow.offer import RequestSampler
from distill_watchdog.shadow.pipeline import TeacherWorker
from distill_watchdog.shadow.service import SamplingService
from distill_watchdog.shadow.slices import SliceRules

__all__ = ["RequestSampler", "SamplingService", "SliceRules", "TeacherWorker"]
