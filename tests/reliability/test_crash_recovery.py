"""kill -9 of the daemon while it serves and writes samples: nothing acknowledged is lost, and
its shadow and teacher processes end with it."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from distill_watchdog.store import Store

from support import DaemonProcess, alive, descendants, eventually, free_port, write_model

pytestmark = pytest.mark.slow
X = np.random.default_rng(5).normal(size=(4, 40)).astype(np.float32).tolist()


def stored_count(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(r'^watchdog_samples_total\{outcome="stored"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def hammer(url: str, stop: threading.Event) -> None:
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            try:
                client.post(url + "/v1/predict", json={"inputs": X, "slice": {"sensor": "a"}})
            except httpx.HTTPError:
                time.sleep(0.01)  # the daemon is being killed or restarted


def test_kill_9_while_writing_samples(store_url, tmp_path, model_files, write_config):
    model, card = model_files()
    teacher, _ = write_model(tmp_path / "teacher", stem="teacher", seed=99)
    port = free_port()
    config = write_config(
        {
            "data_dir": str(tmp_path / "data"),
            "server": {"port": port},
            "store": {"url": store_url},
            "student": {"model": str(model), "card": str(card)},
            "teachers": [
                {
                    "name": "big",
                    "kind": "onnx",
                    "location": str(teacher),
                    "options": {"output_kind": "logits"},
                }
            ],
            "sampling": {"rate": 1.0, "batch_size": 16},
        }
    )
    daemon = DaemonProcess(config, port=port).start()
    version = httpx.get(daemon.url + "/v2/models/student").json()["versions"][0]
    stop = threading.Event()
    load = threading.Thread(target=hammer, args=(daemon.url, stop))
    load.start()
    assert daemon.proc is not None
    try:
        deadline = time.monotonic() + 60
        while stored_count(daemon.url) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        acknowledged = stored_count(daemon.url)
        assert acknowledged >= 200, daemon.log()[-2000:]
        family = descendants(daemon.proc.pid)
        spawned = [p for p in family if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(spawned) == 3  # the shadow process and its two teacher processes (concurrency 2)
    finally:
        daemon.stop(sig=signal.SIGKILL)  # also when the wait above failed: never leak a daemon
        stop.set()
        load.join()
    eventually(lambda: not any(alive(p) for p in family), timeout=15, what="the daemon's processes to end")

    store = Store(store_url)
    with store.db.engine.connect() as conn:
        if store_url.startswith("sqlite"):
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
        samples = conn.execute(sa.text("SELECT COUNT(*) FROM samples")).scalar()
        orphans = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM samples s WHERE NOT EXISTS "
                "(SELECT 1 FROM teacher_outputs t WHERE t.sample_id = s.id)"
            )
        ).scalar()
        dangling = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM teacher_outputs t WHERE NOT EXISTS "
                "(SELECT 1 FROM samples s WHERE s.id = t.sample_id)"
            )
        ).scalar()
    assert samples >= acknowledged
    assert orphans == 0 and dangling == 0  # written together or not at all

    restarted = DaemonProcess(config, port=port).start()
    try:
        assert httpx.get(restarted.url + "/v2/models/student").json()["versions"] == [version]
        r = httpx.post(restarted.url + "/v1/predict", json={"inputs": X})
        assert r.status_code == 200 and r.json()["model_version"] == version
        deadline = time.monotonic() + 30
        while store.count_samples() <= samples and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.count_samples() > samples  # writing again after the restart
    finally:
        restarted.stop()
