"""Fixtures for every suite. Real parts: ONNX Runtime, HTTP on loopback, SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import Postgres, free_port, write_model

os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(autouse=True)
def fresh_metrics() -> None:
    """Every test starts with no counts, gauges or tracked sources in the daemon's one registry,
    so none depends on the tests that ran before it in this process."""
    from distill_watchdog import metrics

    metrics.reset()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    yield pg
    pg.close()


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test."""
    if postgres.skip_reason:
        pytest.skip(postgres.skip_reason)
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite (WAL) and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'watchdog.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def model_files(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Writes a small real MLP (ONNX) and its card; keyword args vary seed, widths, card fields."""

    def make(stem: str = "student", **kw: Any) -> tuple[Path, Path]:
        return write_model(tmp_path / "models-src", stem=stem, **kw)

    return make


@pytest.fixture
def make_settings(tmp_path: Path, store_url: str) -> Callable[..., Any]:
    """Settings for a daemon on a free loopback port, on this test's store."""
    from distill_watchdog.config import load_settings

    def make(**overrides: Any) -> Any:
        base: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "server": {"port": free_port(), "admin_token": "s3cret-token-for-tests"},
            "store": {"url": store_url, "poll_interval_s": 0.2},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return load_settings(None, **base)

    return make


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(data: dict[str, Any], name: str = "watchdog.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write
