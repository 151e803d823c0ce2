"""Teachers as the daemon sees them: guarded async calls (timeouts, retries, circuit breaker)
over the engine's adapters, and version pinning with quarantine."""

from .guard import CallFailed, CircuitBreaker, GuardedTeacher, TeacherAnswer
from .pinning import Pins, TeacherState

__all__ = ["CallFailed", "CircuitBreaker", "GuardedTeacher", "Pins", "TeacherAnswer", "TeacherState"]
