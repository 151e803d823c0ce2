"""Shared pieces for the sampling suites: a daemon wired to a fake teacher, polling, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from distill_watchdog import metrics

from support import eventually  # noqa: F401 - re-exported for the suites

ADMIN = {"Authorization": "Bearer s3cret-token-for-tests"}


def teacher_config(url: str, name: str = "big", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "http-v2",
        "location": url,
        "timeout_s": 1.0,
        "backoff_s": 0.01,
        "options": {"model_name": "big", "input_name": "x"},
        **extra,
    }


def daemon_settings(
    make_settings: Callable[..., Any],
    model_files: Callable[..., Any],
    teachers: list[dict],
    sampling: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    model, card = model_files()
    return make_settings(
        student={"model": str(model), "card": str(card), "max_batch_delay_ms": 0.5},
        teachers=teachers,
        sampling={"rate": 1.0, "batch_size": 16, "concurrency": 1, "batch_wait_s": 0.05, **(sampling or {})},
        **overrides,
    )


def predict(url: str, rows: int = 4, seed: int = 0, **body: Any) -> dict[str, Any]:
    x = np.random.default_rng(seed).normal(size=(rows, 40)).round(4).tolist()
    response = httpx.post(f"{url}/v1/predict", json={"inputs": x, **body}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def sample_count(outcome: str) -> float:
    """As /metrics shows it: this process's count and the shadow process's together."""
    return metrics.MERGED.get_sample_value("watchdog_samples_total", {"outcome": outcome}) or 0.0


def counter(name: str, **labels: str) -> float:
    return metrics.MERGED.get_sample_value(name, labels) or 0.0
