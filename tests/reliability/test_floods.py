"""Floods: sampled traffic at 10x the queue's capacity, and bodies over the limit.

Memory stays bounded, every sampled row is accounted for (stored + dropped), errors are 4xx
or counted drops, never a crash.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from support import DaemonProcess, eventually, free_port
from teachers.fake_teacher import FakeTeacher

pytestmark = pytest.mark.slow
QUEUE = 100


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def counter(text: str, outcome: str) -> float:
    m = re.search(rf'^watchdog_samples_total\{{outcome="{outcome}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def flood(url: str, requests: int, rows: int) -> list[int]:
    x = np.random.default_rng(0).normal(size=(rows, 40)).round(3).tolist()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
        sem = asyncio.Semaphore(32)

        async def one() -> int:
            async with sem:
                return (await client.post(url + "/v1/predict", json={"inputs": x})).status_code

        return await asyncio.gather(*(one() for _ in range(requests)))


def test_sampled_flood_is_bounded_and_accounted(tmp_path, model_files, write_config):
    model, card = model_files()
    port = free_port()
    with FakeTeacher(delay_s=0.5) as teacher:  # a slow teacher: the queue fills up
        config = write_config(
            {
                "data_dir": str(tmp_path / "data"),
                "server": {"port": port},
                "student": {"model": str(model), "card": str(card)},
                "teachers": [
                    {
                        "name": "big",
                        "kind": "http-v2",
                        "location": teacher.url,
                        "timeout_s": 5,
                        "options": {"model_name": "big", "input_name": "x"},
                    }
                ],
                "sampling": {"rate": 1.0, "queue_size": QUEUE, "batch_size": 16},
            }
        )
        with DaemonProcess(config, port=port) as daemon:
            asyncio.run(flood(daemon.url, 50, 4))  # warm-up
            before = rss_kib(daemon.proc.pid)
            statuses = asyncio.run(flood(daemon.url, 1000, 4))  # 4,000 sampled rows = 40x the queue
            after = rss_kib(daemon.proc.pid)
            text = httpx.get(daemon.url + "/metrics").text
            depth = float(re.search(r"^watchdog_sample_queue_depth (\S+)$", text, re.M).group(1))
            r = httpx.post(daemon.url + "/v1/predict", content=b'{"inputs": [[' + b"0," * 1_100_000 + b"0]]}")
            assert r.status_code == 413
            assert daemon.proc.poll() is None

            def settled() -> float:
                """Every sampled row ends stored or dropped once the queue and the teacher drain."""
                now = httpx.get(daemon.url + "/metrics").text
                return sum(counter(now, o) for o in ("stored", "dropped", "quarantined", "teacher_error"))

            eventually(lambda: settled() == 4200, timeout=60, what="all 4,200 sampled rows accounted for")
    assert set(statuses) == {200}
    dropped = counter(text, "dropped")
    assert dropped > 0
    assert depth <= QUEUE
    accounted = sum(counter(text, o) for o in ("stored", "dropped", "quarantined", "teacher_error"))
    assert accounted + depth <= 4200  # mid-flood: the rest are with the teacher or awaiting the write
    assert after - before < 60 * 1024, f"RSS grew {after - before} KiB"
