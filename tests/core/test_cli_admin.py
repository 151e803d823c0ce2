"""Every admin action from the command line, against a running daemon over real HTTP:
`runs list|show|trigger|approve|reject`, `teachers list|accept`, and `models ...` on the store the
daemon serves from (it hot-swaps). Errors are one line: the daemon's own text, or which URL failed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import yaml

from distill_watchdog.loop.scheduler import Scheduler
from distill_watchdog.server import default_components
from distill_watchdog.store.tables import DistillRun

from shadow.helpers import daemon_settings, predict, teacher_config
from support import CLI, ServerThread, eventually, free_port
from teachers.fake_teacher import FakeTeacher

TOKEN = "s3cret-token-for-tests"  # tests/conftest.py's make_settings


def cli(
    *args: str, token: str | None = TOKEN, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG")}
    if token is not None:
        env["WATCHDOG_ADMIN_TOKEN"] = token
    extra = ["--config", str(config)] if config else []
    return subprocess.run([CLI, *args, *extra], capture_output=True, text=True, timeout=120, env=env)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout


def _pending_run(daemon, run_id: str, candidate: str) -> None:
    """A run whose candidate passed its gates and awaits review (what `_decide` leaves behind)."""
    run_dir = Path(daemon.settings.data_dir) / "runs" / run_id
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "train.npz", x=np.zeros((5, 40), np.float32))
    now = time.time()
    daemon.store.add_run(
        DistillRun(
            id=run_id,
            created_at=now,
            updated_at=now,
            status="pending",
            trigger="policy",
            parent_version=daemon.models.current.version,
            candidate_version=candidate,
            run_dir=str(run_dir),
            detail_json=orjson.dumps({"reason": "weak slices: sensor=c", "gates_passed": True}).decode(),
        )
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_runs_from_the_command_line(make_settings, model_files, tmp_path: Path) -> None:
    model, card = model_files()
    settings = make_settings(student={"model": str(model), "card": str(card)}, monitor={"interval_s": 3600})
    with ServerThread(settings, components=[Scheduler()]) as srv:
        daemon = srv.daemon
        first = daemon.registry.register_files(*model_files("c1", seed=5), actor="test").version
        second = daemon.registry.register_files(*model_files("c2", seed=6), actor="test").version
        _pending_run(daemon, "run-one", first)
        _pending_run(daemon, "run-two", second)
        url = ["--url", srv.url]

        listing = ok(cli("runs", "list", *url))
        assert listing.splitlines()[0].split() == [
            "RUN",
            "STATUS",
            "TRIGGER",
            "STARTED",
            "PARENT",
            "CANDIDATE",
            "REASON",
        ]
        assert "run-one" in listing and "run-two" in listing and "pending" in listing
        assert {r["id"] for r in json.loads(ok(cli("runs", "list", "--json", *url)))} == {
            "run-one",
            "run-two",
        }
        shown = ok(cli("runs", "show", "run-one", *url))
        assert (
            "status     pending" in shown and f"candidate  {first}" in shown and "/ui/runs/run-one" in shown
        )

        # Token and URL from the config file instead of the environment.
        config = tmp_path / "cli.yaml"
        config.write_text(yaml.safe_dump({"server": {"port": srv.port, "admin_token": TOKEN}}))
        out = ok(cli("runs", "approve", "run-one", token=None, config=config))
        assert out.strip() == f"promoted: run run-one, student {first} is active"
        assert daemon.models.current.version == first
        again = cli("runs", "approve", "run-one", *url)
        assert again.returncode == 1
        assert again.stderr.strip() == (
            "error: run run-one has no candidate awaiting promotion "
            "(HTTP 409 from /admin/runs/run-one/approve)"
        )
        assert ok(cli("runs", "reject", "run-two", "--reason", "worse on sensor c", *url)).strip() == (
            "declined: run run-two"
        )
        assert (
            json.loads(daemon.store.get_run("run-two").detail_json)["decline_reason"] == "worse on sensor c"
        )
        assert (
            json.loads(ok(cli("runs", "list", "--status", "declined", "--json", *url)))[0]["id"] == "run-two"
        )

        # A manual trigger starts a real run; with no rows of its slice it ends waiting for data,
        # and says how many rows it has and needs.
        started = json.loads(
            ok(cli("runs", "trigger", "--slice", "sensor=c", "--reason", "by hand", "--json", *url))
        )
        assert started["status"] == "running" and started["reason"] == "by hand"
        run = eventually(
            lambda: (
                (r := json.loads(ok(cli("runs", "show", started["id"], "--json", *url))))["status"]
                == "failed"
                and r
            ),
            timeout=120,
            what="the triggered run to fail for want of samples",
        )
        assert "waiting for data" in run["error"] and "sensor=c: 0" in run["error"]
        assert run["detail"]["trigger_numbers"]["weak_slices"] == [{"slice": "sensor=c"}]
        audit = {(e.actor, e.action, e.subject) for e in daemon.store.audit_events(20)}
        assert {("admin-api", "run.start", started["id"]), ("admin-api", "run.decline", "run-two")} <= audit

        missing = cli("runs", "show", "nope", *url)
        assert missing.returncode == 1 and missing.stderr.strip() == (
            "error: run: no run 'nope' (HTTP 404 from /admin/runs/nope)"
        )
        wrong = cli("runs", "list", *url, token="not-the-token")
        assert wrong.returncode == 1 and "missing or wrong bearer token (HTTP 401" in wrong.stderr


def test_unreachable_daemon_and_missing_token_are_one_line_errors() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    refused = cli("teachers", "list", "--url", url)
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == f"error: cannot reach the daemon at {url} (connection refused); is it running? (--url)"
    )
    no_token = cli("runs", "list", "--url", url, token=None)
    assert no_token.returncode == 1
    assert no_token.stderr.strip() == (
        "error: no admin token: set WATCHDOG_ADMIN_TOKEN or server.admin_token in the config"
    )
    assert ok(cli("--version")).startswith("distill-watchdog ")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_teachers_from_the_command_line(make_settings, model_files) -> None:
    with FakeTeacher(version="v1") as teacher:
        settings = daemon_settings(make_settings, model_files, [teacher_config(teacher.url)])
        with ServerThread(settings, default_components(settings)) as srv:
            url = ["--url", srv.url]
            predict(srv.url, rows=4)
            eventually(lambda: "v1" in ok(cli("teachers", "list", *url)), what="v1 pinned")
            teacher.version, teacher.shift = "v2", 1  # re-evaluation fails: a person must accept
            predict(srv.url, rows=4, seed=1)
            listing = eventually(
                lambda: (
                    (out := ok(cli("teachers", "list", *url))).splitlines()[1].split()[2] == "quarantine"
                    and out
                ),
                what="v2 awaiting acceptance",
            )
            assert listing.splitlines()[1].split()[:5] == ["big", "http-v2", "quarantine", "v1", "v2"]
            assert "on a version change: quarantine" in listing
            out = ok(cli("teachers", "accept", "big", "--reason", "checked the release notes", *url))
            assert out.strip() == "teacher big: pinned v2, state ok"
            data = json.loads(ok(cli("teachers", "list", "--json", *url)))
            assert data["teachers"][0]["pinned_version"] == "v2"
            unknown = cli("teachers", "accept", "nobody", *url)
            assert unknown.returncode == 1 and "unknown teacher 'nobody' (HTTP 404" in unknown.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_models_commands_reach_a_running_daemon_through_its_store(
    make_settings, model_files, write_config, store_url: str, tmp_path: Path
) -> None:
    model, card = model_files()
    settings = make_settings(student={"model": str(model), "card": str(card)})
    config = write_config({"data_dir": settings.data_dir.as_posix(), "store": {"url": store_url}})
    with ServerThread(settings, components=[]) as srv:

        def served() -> str:
            return httpx.post(f"{srv.url}/v1/predict", json={"inputs": [[0.0] * 40]}).json()["model_version"]

        first = served()
        new_model, _ = model_files("v2", seed=9)
        version = ok(cli("models", "register", str(new_model), "--activate", config=config)).strip()
        eventually(lambda: served() == version, what="the daemon serves the registered version")
        assert ok(cli("models", "rollback", config=config)).strip() == f"active: {first}"
        eventually(lambda: served() == first, what="the daemon rolled back")
        assert ok(cli("models", "activate", version, config=config)).strip() == f"active: {version}"
        eventually(lambda: served() == version, what="the daemon serves the activated version")
        listed = httpx.get(f"{srv.url}/admin/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert listed["active"] == version and len(listed["models"]) == 2
