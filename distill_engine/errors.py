"""Exceptions the engine raises; callers map them to one-line messages and exit codes."""

from __future__ import annotations


class DistillError(Exception):
    """Base class of every error the engine raises on purpose."""


class JobError(DistillError):
    """A user error in the job spec or its inputs; the message names the dotted field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message)


class TeacherError(DistillError):
    """A teacher could not be loaded or answered badly (transport, shape, JSON path)."""


class Cancelled(DistillError):
    """The caller asked the run to stop; nothing is written after this point."""
