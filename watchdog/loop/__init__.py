"""Scheduled and launched work: the leader-only scheduler, the monitor child, redistillation runs."""
