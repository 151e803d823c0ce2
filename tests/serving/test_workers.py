"""`server.workers: 2` under real uvicorn: one scrape counts every worker and child process,
the sampling rate holds across workers, and a hot swap reaches every worker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from distill_watchdog.registry import Registry
from distill_watchdog.store import Store

from support import DaemonProcess, card_for, eventually, free_port, mlp_onnx_bytes, wait_ready, write_model

TOKEN = "s3cret-token-for-tests"
N = 400


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _predict(url: str, seed: int) -> str:
    """One request on a new connection (the kernel hands each to either worker); its version."""
    x = np.random.default_rng(seed).normal(size=(1, 40)).round(4).tolist()
    r = httpx.post(f"{url}/v1/predict", json={"inputs": x}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def _processes_that_served(folder: Path) -> int:
    """Processes whose own metrics file counted /v1/predict requests."""
    served = 0
    for path in folder.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "watchdog_requests_total" and value > 0:
                served += 1
                break
    return served


@pytest.mark.slow  # two workers, each with its shadow and teacher processes
def test_two_workers_count_sample_and_swap_as_one(tmp_path: Path, write_config) -> None:
    model, card = write_model(tmp_path / "src")
    port, url = free_port(), f"sqlite:///{tmp_path / 'watchdog.db'}"
    config = write_config(
        {
            "data_dir": str(tmp_path / "data"),
            "server": {"port": port, "admin_token": TOKEN, "workers": 2},
            "store": {"url": url, "poll_interval_s": 0.2},
            "student": {"model": str(model), "card": str(card), "max_batch_delay_ms": 0.5},
            "teachers": [{"name": "big", "kind": "onnx", "location": str(model), "timeout_s": 30.0}],
            "sampling": {"rate": 0.5, "batch_size": 16, "batch_wait_s": 0.05},
            "monitor": {"interval_s": 3600.0},
        }
    )
    daemon = DaemonProcess(config, port=port).start(wait=False)
    try:
        wait_ready(daemon.url, timeout=240)  # two workers start their processes side by side
        # Ready means one worker answers; on a loaded machine the other may still be loading.
        deadline = time.monotonic() + 120
        while _processes_that_served(tmp_path / "data" / "metrics") < 2 and time.monotonic() < deadline:
            _predict(daemon.url, 0)
            time.sleep(0.05)
        route = ("watchdog_requests_total", (("code", "200"), ("route", "/v1/predict")))
        warm = int(_scrape(daemon.url).get(route, 0))
        first = {_predict(daemon.url, seed) for seed in range(N)}
        assert _processes_that_served(tmp_path / "data" / "metrics") == 2  # both workers answered
        scraped = _scrape(daemon.url)
        assert scraped[route] == warm + N

        # Each worker samples its own requests at the rate: about half of all of them are stored,
        # and the count on /metrics (each worker's shadow process counts its own) matches the store.
        store = Store(url)

        def written() -> float:  # rows written, whatever their teachers answered
            scraped = _scrape(daemon.url)
            outcomes = ("stored", "quarantined", "teacher_error")
            return sum(scraped.get(("watchdog_samples_total", (("outcome", o),)), 0.0) for o in outcomes)

        def settled() -> tuple[int, float] | None:
            before = store.count_samples()
            time.sleep(1.5)
            counts = (store.count_samples(), written())
            return counts if before > 0 and before == counts[0] == counts[1] else None

        eventually(settled, timeout=90, what="every sampled row written and counted")
        sent = warm + N  # 6 sd of Binomial(400, 0.5) either side
        assert sent * 0.5 - 60 <= store.count_samples() <= sent * 0.5 + 60

        # A version activated through one worker is what every worker serves next.
        new = Registry(store, tmp_path / "data" / "models").register(
            mlp_onnx_bytes(40, 10, seed=11), card_for(), actor="test"
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(f"{daemon.url}/admin/models/{new.version}/activate", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        eventually(
            lambda: {_predict(daemon.url, seed) for seed in range(40)} == {new.version},
            timeout=30,
            what="every worker serving the new version",
        )
        assert first != {new.version}
        info = {k[1]: v for k, v in _scrape(daemon.url).items() if k[0] == "watchdog_model_info"}
        assert info == {(("version", new.version),): 1.0}
    finally:
        daemon.stop()
