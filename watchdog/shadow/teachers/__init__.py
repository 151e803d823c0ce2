"""Teachers as the daemon sees them: guarded async calls (timeouts, retries, circuit breaker)
over the engine's adapters, and version pinning with quarantine."""

from distill_watchdog.shadow.teachers.guard import CallFailed, CircuitBreaker, GuardedTeacher, TeacherAnswer
from distill_watchdog.shadow.teachers.pinning import Pins, TeacherState

__all__ = ["CallFailed", "CircuitBreaker", "GuardedTeacher", "Pins", "TeacherAnswer", "TeacherState"]
