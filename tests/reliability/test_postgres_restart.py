"""PostgreSQL restarted mid-run: serving never stops, the daemon reconnects, samples resume."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from distill_watchdog.store import Store

from support import DaemonProcess, Postgres, eventually, free_port, write_model

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
X = np.random.default_rng(6).normal(size=(2, 40)).astype(np.float32).tolist()


@pytest.fixture
def private_postgres():
    pg = Postgres(own_cluster=True)
    if pg.skip_reason:
        pytest.skip(pg.skip_reason)
    yield pg
    pg.close()


def test_database_restart_mid_run(private_postgres, tmp_path, model_files, write_config):
    url = private_postgres.create_database()
    model, card = model_files()
    teacher, _ = write_model(tmp_path / "teacher", stem="teacher", seed=98)
    port = free_port()
    config = write_config(
        {
            "data_dir": str(tmp_path / "data"),
            "server": {"port": port},
            "store": {"url": url, "poll_interval_s": 0.2},
            "student": {"model": str(model), "card": str(card)},
            "teachers": [
                {
                    "name": "big",
                    "kind": "onnx",
                    "location": str(teacher),
                    "options": {"output_kind": "logits"},
                }
            ],
            "sampling": {"rate": 1.0, "batch_size": 8},
        }
    )
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                statuses.append(
                    client.post(f"http://127.0.0.1:{port}/v1/predict", json={"inputs": X}).status_code
                )
                time.sleep(0.005)

    store = Store(url)
    with DaemonProcess(config, port=port) as daemon:
        thread = threading.Thread(target=load)
        thread.start()
        try:
            eventually(lambda: store.count_samples() > 20, timeout=60)
            served_before = len(statuses)
            private_postgres.restart(pause_s=2.0)  # the daemon's connections are cut
            store.close()
            eventually(lambda: len(statuses) > served_before + 200, timeout=60)  # serving went on throughout
            after = Store(url, create=False)
            count = after.count_samples()
            eventually(
                lambda: after.count_samples() > count + 20, timeout=60
            )  # writing again after reconnect
        finally:
            stop.set()
            thread.join()
        exposition = httpx.get(daemon.url + "/metrics").text
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert "watchdog_store_errors_total{" in exposition  # the outage was noticed and counted
