"""Per-slice sampling of live traffic, the bounded queue, and the teacher worker."""

from .offer import RequestSampler
from .service import SamplingService
from .slices import SliceRules
from .worker import TeacherWorker

__all__ = ["RequestSampler", "SamplingService", "SliceRules", "TeacherWorker"]
