"""Alerts reach a real Alertmanager (v2 API) and a JSON webhook; retries, resolve, duplicate suppression."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from distill_watchdog import metrics
from distill_watchdog.alerts import Alerter
from distill_watchdog.config import AlertsConfig
from distill_watchdog.server import default_components

from sampling.helpers import ADMIN, daemon_settings, eventually, predict, teacher_config
from support import ServerThread, free_port
from teachers.fake_teacher import FakeTeacher

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Alertmanager:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "alertmanager.yml"
        config.write_text(
            "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n"
        )
        self.log = open(folder / "alertmanager.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(ALERTMANAGER),
                f"--config.file={config}",
                f"--storage.path={folder / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(self._ready, timeout=20, what="alertmanager ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self, name: str) -> list[dict[str, Any]]:
        found = httpx.get(f"{self.url}/api/v2/alerts", params={"filter": f'alertname="{name}"'}).json()
        return [a for a in found if a["status"]["state"] == "active"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)")
    am = Alertmanager(tmp_path)
    yield am
    am.stop()


class Webhook:
    """A JSON receiver that fails the first `failures` posts with HTTP 500."""

    def __init__(self, failures: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.failures = failures
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status = 500 if owner.failures > 0 else 200
                if owner.failures > 0:
                    owner.failures -= 1
                else:
                    owner.received.append(body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _alerts(name: str, receiver: str, outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("watchdog_alerts_total", {"receiver": receiver, "outcome": outcome})
        or 0
    )


def test_alertmanager_and_webhook_receive_fire_and_resolve(alertmanager: Alertmanager) -> None:
    hook = Webhook(failures=1)
    cfg = AlertsConfig(
        alertmanager_url=alertmanager.url, webhook_urls=[hook.url], backoff_s=0.01, repeat_s=60
    )
    labels = {"teacher": "big", "severity": "warning"}
    suppressed_before = _alerts("", "all", "suppressed")
    failed_before = _alerts("", "webhook", "failed")

    async def scenario() -> None:
        alerter = Alerter(cfg)
        await alerter.start(None)
        alerter.fire("WatchdogTestAlert", labels, {"summary": "testing"})
        alerter.fire("WatchdogTestAlert", labels, {"summary": "testing"})  # duplicate: suppressed
        await alerter.queue.join()
        assert await asyncio.to_thread(alertmanager.alerts, "WatchdogTestAlert")
        alerter.resolve("WatchdogTestAlert", labels)
        await alerter.stop()

    asyncio.run(scenario())
    assert _alerts("", "all", "suppressed") - suppressed_before == 1
    assert _alerts("", "webhook", "failed") == failed_before  # the 500 was retried, then delivered
    assert [m["status"] for m in hook.received] == ["firing", "resolved"]
    assert hook.received[0]["labels"] == {
        "alertname": "WatchdogTestAlert",
        "service": "distill-watchdog",
        **labels,
    }
    assert hook.received[0]["annotations"] == {"summary": "testing"}
    eventually(lambda: alertmanager.alerts("WatchdogTestAlert") == [], what="alert resolved in Alertmanager")
    hook.close()


def test_unreachable_receiver_is_counted_not_raised() -> None:
    cfg = AlertsConfig(
        alertmanager_url=f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01, timeout_s=1
    )
    before = _alerts("", "alertmanager", "failed")

    async def scenario() -> None:
        alerter = Alerter(cfg)
        await alerter.start(None)
        alerter.fire("WatchdogNobodyListens", {}, {"summary": "x"})
        await alerter.queue.join()
        await alerter.stop()

    asyncio.run(scenario())
    assert _alerts("", "alertmanager", "failed") - before == 1


def test_teacher_version_change_alerts_alertmanager_and_resolves_on_accept(
    alertmanager: Alertmanager, make_settings, model_files
) -> None:
    with FakeTeacher(version="v1") as teacher:
        settings = daemon_settings(
            make_settings,
            model_files,
            [teacher_config(teacher.url)],
            alerts={"alertmanager_url": alertmanager.url},
        )
        with ServerThread(settings, default_components(settings)) as server:
            predict(server.url, rows=2)
            eventually(lambda: server.daemon.store.count_samples() == 2, what="v1 pinned")
            teacher.version, teacher.shift = "v9", 1
            predict(server.url, rows=2, seed=1)
            fired = eventually(
                lambda: alertmanager.alerts("WatchdogTeacherVersionChanged"), what="alert in AM"
            )
            alert = fired[0]
            assert alert["labels"]["teacher"] == "big" and alert["labels"]["severity"] == "critical"
            assert alert["annotations"]["new_version"] == "v9"
            assert alert["annotations"]["pinned_version"] == "v1"
            assert httpx.post(f"{server.url}/admin/teachers/big/accept", headers=ADMIN).status_code == 200
            eventually(
                lambda: alertmanager.alerts("WatchdogTeacherVersionChanged") == [], what="alert resolved"
            )
