"""Per-slice sampling of live traffic, the bounded queue, and the teacher worker."""

from .service import SamplingService
from .slices import SliceRules

__all__ = ["SamplingService", "SliceRules"]
