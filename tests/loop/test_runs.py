"""Redistillation runs in a real daemon (uvicorn in-process, child processes for the work).

A crashing job and a job that times out mark the run failed, count it and alert, while
serving keeps answering; a candidate that fails its gates is not promoted and is reported.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from distill_watchdog.alerts import Alerter
from distill_watchdog.loop.scheduler import Scheduler

from .helpers import Webhook, counter, eventually, seed_samples
from support import CLI, ServerThread

AUTH = {"Authorization": "Bearer s3cret-token-for-tests"}

VERDICTS = ("under_trained", "capacity_limited", "converged", "ceiling_reached")


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def _server(make_settings, model_files, webhook: Webhook, **overrides) -> ServerThread:
    model, card = model_files()
    settings = make_settings(
        student={"model": str(model), "card": str(card)},
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        alerts={"webhook_urls": [webhook.url], "backoff_s": 0.05},
        monitor={"interval_s": 3600, "leader_poll_s": 0.2},
        **overrides,
    )
    return ServerThread(settings, components=[Alerter(settings.alerts), Scheduler()])


def _run(url: str, run_id: str) -> dict:
    return httpx.get(f"{url}/admin/runs/{run_id}", headers=AUTH).json()


def _trigger(url: str, **body) -> str:
    r = httpx.post(f"{url}/admin/runs", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_crashing_and_hanging_jobs_fail_alert_and_leave_serving_alone(
    make_settings, model_files, webhook: Webhook
) -> None:
    crash = "{python} -c \"import sys; print('boom: out of memory'); sys.exit(3)\""
    distill = {"launcher": "command", "command": crash}
    with _server(make_settings, model_files, webhook, distill=distill) as srv:
        version = srv.daemon.models.current.version
        seed_samples(srv.daemon.store, version, n=300)
        failed_before = counter("watchdog_distill_runs_total", outcome="failed")
        run_id = _trigger(srv.url, reason="test <crash>")
        run = eventually(lambda: (r := _run(srv.url, run_id))["status"] == "failed" and r, what="failed run")
        assert "exit code 3" in run["error"] and "boom: out of memory" in run["error"]
        assert counter("watchdog_distill_runs_total", outcome="failed") == failed_before + 1
        eventually(lambda: "WatchdogRunFailed" in webhook.names(), what="failure alert")
        assert "WatchdogRunStarted" in webhook.names()
        r = httpx.post(f"{srv.url}/v1/predict", json={"inputs": [[0.0] * 40]})
        assert r.status_code == 200 and r.json()["model_version"] == version
        cli = subprocess.run(
            [CLI, "report", run_id],
            env={**os.environ, "WATCHDOG__STORE__URL": srv.daemon.settings.store_url},
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 0 and "report.html" in cli.stdout and "status: failed" in cli.stdout
        unknown = subprocess.run(
            [CLI, "report", "nope"],
            env={**os.environ, "WATCHDOG__STORE__URL": srv.daemon.settings.store_url},
            capture_output=True,
            text=True,
        )
        assert unknown.returncode == 1 and "no run" in unknown.stderr
        page = httpx.get(f"{srv.url}/ui/runs/{run_id}").text
        assert "exit code 3" in page and "test &lt;crash&gt;" in page and "<crash>" not in page

        # A job that hangs is killed at distill.timeout_s (its whole process group).
        srv.daemon.settings.distill.command = '{python} -c "import time; time.sleep(60)"'
        srv.daemon.settings.distill.timeout_s = 3.0
        run_id = _trigger(srv.url)
        second = httpx.post(f"{srv.url}/admin/runs", json={}, headers=AUTH)  # one training child at a time
        assert second.status_code == 409 and run_id in second.json()["error"]
        run = eventually(lambda: (r := _run(srv.url, run_id))["status"] == "failed" and r, what="timeout")
        assert "timed out after 3 s" in run["error"]
        assert httpx.post(f"{srv.url}/admin/runs/{run_id}/approve", headers=AUTH).status_code == 409


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_candidate_failing_its_gates_is_rejected_and_reported(
    make_settings, model_files, webhook: Webhook
) -> None:
    with _server(
        make_settings,
        model_files,
        webhook,
        policy={"min_gain": 0.9, "auto_promote": True, "max_regression": 0.5},
        distill={"job": {"train": {"epochs": 3}, "student": {"kwargs": {"hidden": [16]}}}},
    ) as srv:
        version = srv.daemon.models.current.version
        seed_samples(srv.daemon.store, version, n=600, shift_c=2.0)
        rejected = counter("watchdog_distill_runs_total", outcome="rejected")
        run_id = _trigger(srv.url, weak_slices=["sensor=c"])
        run = eventually(
            lambda: (r := _run(srv.url, run_id))["status"] not in ("running",) and r, timeout=240, what="run"
        )
        assert run["status"] == "rejected", run
        assert [g["gate"] for g in run["failed_gates"]] == ["min_gain"]
        assert counter("watchdog_distill_runs_total", outcome="rejected") == rejected + 1
        assert srv.daemon.models.current.version == version  # not promoted
        report_dir = Path(srv.daemon.settings.data_dir) / "runs" / run_id
        html = eventually(
            lambda: (report_dir / "report.html").exists() and (report_dir / "report.html").read_text(),
            what="report.html",
        )
        assert "Gates:" in html and "failed" in html and "sensor=c" in html
        data = httpx.get(f"{srv.url}/ui/runs/{run_id}/report.json").json()
        assert data["status"] == "rejected" and data["gates"]["passed"] is False
        assert data["curation"]["kept"] > 0 and data["stop"]["verdict"] in VERDICTS
        assert {"holdout"} <= set(data["slices"])
        assert "WatchdogRunFinished" in webhook.names() or eventually(
            lambda: "WatchdogRunFinished" in webhook.names(), what="finished alert"
        )
