"""Fixtures of the alert suites: a real Alertmanager on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import ALERTMANAGER, Alertmanager


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)")
    am = Alertmanager(tmp_path)
    yield am
    am.stop()
