"""Samples, pins and the frozen eval set survive a restart of the real `distill-watchdog serve` process."""

from __future__ import annotations

import httpx
import pytest

from distill_watchdog.store import Store

from .helpers import ADMIN, eventually, predict, teacher_config
from support import DaemonProcess, free_port, recent_samples
from teachers.fake_teacher import FakeTeacher


@pytest.mark.slow
def test_samples_and_pins_survive_a_restart(store_url, tmp_path, model_files, write_config) -> None:
    model, card = model_files()
    port = free_port()
    with FakeTeacher(version="v1") as teacher:
        config = write_config(
            {
                "data_dir": str(tmp_path / "data"),
                "server": {"port": port, "admin_token": "s3cret-token-for-tests"},
                "store": {"url": store_url},
                "student": {"model": str(model), "card": str(card)},
                "teachers": [teacher_config(teacher.url)],
                "sampling": {"rate": 1.0, "eval_set_size": 4, "concurrency": 1},
            }
        )
        store = Store(store_url)
        with DaemonProcess(config, port=port) as daemon:
            first = predict(daemon.url, rows=6)
            stored = lambda: store.count_samples() == 6 and store.eval_count("big") == 4  # noqa: E731
            eventually(stored, what="rows stored", timeout=60)
        with DaemonProcess(config, port=port) as daemon:
            ids = {r["request_id"] for r in recent_samples(store, 100)}
            assert ids == set(first["ids"])
            reply = httpx.post(
                f"{daemon.url}/v1/feedback", json={"labels": [{"id": first["ids"][0], "label": 2}]}
            )
            assert reply.json() == {"accepted": 1, "unknown_ids": []}
            status = httpx.get(f"{daemon.url}/admin/teachers", headers=ADMIN).json()["teachers"][0]
            assert status["pinned_version"] == "v1"  # read back from the store, not re-pinned
            predict(daemon.url, rows=2, seed=1)
            eventually(lambda: store.count_samples() == 8, what="sampling resumed after restart", timeout=60)
        assert store.eval_count("big") == 4  # frozen: never grows
        store.close()
