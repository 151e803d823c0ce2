"""Distill Watchdog: keeps a distilled student model honest in production."""

__version__ = "0.1.0"
