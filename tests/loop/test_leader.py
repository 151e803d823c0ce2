"""Leader election on PostgreSQL: two daemon processes, one leader; kill it and the other takes over."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from .helpers import eventually
from support import DaemonProcess, free_port


def leader_value(url: str) -> float | None:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("watchdog_leader "):
            return float(line.split()[1])
    return None


@pytest.mark.slow
@pytest.mark.postgres
def test_leader_failover_between_two_daemons(pg_url: str, model_files, write_config, tmp_path: Path) -> None:
    model, card = model_files()

    def config(name: str, port: int) -> Path:
        return write_config(
            {
                "data_dir": str(tmp_path / "shared"),  # replicas share the model files
                "server": {"port": port, "admin_token": "leader-test-token-0001"},
                "store": {"url": pg_url, "poll_interval_s": 0.5},
                "student": {"model": str(model), "card": str(card)},
                "monitor": {"leader_poll_s": 0.3, "interval_s": 3600},
            },
            name=f"{name}.yaml",
        )

    first = DaemonProcess(config("one", p1 := free_port()), port=p1).start()
    second = None
    try:
        eventually(lambda: leader_value(first.url) == 1.0, what="first daemon leads")
        second = DaemonProcess(config("two", p2 := free_port()), port=p2).start()
        time.sleep(1.5)  # several lock polls: the second must not take the lock while the first holds it
        assert leader_value(second.url) == 0.0 and leader_value(first.url) == 1.0
        first.stop(signal.SIGKILL)  # no clean release: PostgreSQL frees the lock with the dead session
        eventually(lambda: leader_value(second.url) == 1.0, timeout=30, what="second daemon takes over")
    finally:
        first.stop()
        if second is not None:
            second.stop()
