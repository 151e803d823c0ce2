"""Real parts: a real Prometheus scrapes a real daemon; two daemons share one PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import DaemonProcess, free_port

from .files import RULES, SCRAPE_JOB, rules

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
TOKEN = "deploy-test-token"


def _until(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    """Polls `check` until it returns something truthy; a generous deadline, not a timing assertion."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout}s (last: {last!r})")


def _daemon_config(tmp_path: Path, model_files: Callable[..., tuple[Path, Path]], **extra: Any) -> Path:
    model, card = model_files()
    config: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server": {"port": free_port(), "admin_token": TOKEN},
        "student": {"model": str(model), "card": str(card), "max_batch_delay_ms": 0.5},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _traffic(url: str) -> None:
    """A few answers of each kind, so counters and histograms have series."""
    row = [0.1] * 40
    for _ in range(3):
        assert httpx.post(f"{url}/v1/predict", json={"inputs": [row, row]}).status_code == 200
    assert httpx.post(f"{url}/v1/predict", json={"inputs": [[1.0, 2.0]]}).status_code == 422
    infer = {"inputs": [{"name": "x", "shape": [1, 40], "datatype": "FP32", "data": row}]}
    httpx.post(f"{url}/v2/models/student/infer", json=infer)
    httpx.get(f"{url}/v2/health/ready")


# --- Prometheus ---------------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path, model_files: Callable[..., tuple[Path, Path]]) -> Iterator[DaemonProcess]:
    config = _daemon_config(tmp_path, model_files)
    port = yaml.safe_load(config.read_text())["server"]["port"]
    with DaemonProcess(config, port=port) as proc:
        yield proc


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_daemons_metrics(daemon: DaemonProcess):
    _traffic(daemon.url)
    text = httpx.get(f"{daemon.url}/metrics").text
    for name in ("watchdog_requests_total", "watchdog_request_duration_seconds_bucket",
                 "watchdog_batch_size_bucket", "watchdog_model_info"):  # fmt: skip
        assert name in text
    check = [PROMTOOL, "check", "metrics"]
    out = subprocess.run(check, input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{out.stdout}{out.stderr}\n--- /metrics ---\n{text[:4000]}"


@pytest.fixture
def prometheus(tmp_path: Path, daemon: DaemonProcess) -> Iterator[str]:
    """A real Prometheus on a free loopback port, scraping the daemon every second, with our rules."""
    assert PROMETHEUS
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULES],
        "scrape_configs": [
            {"job_name": SCRAPE_JOB, "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]},
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _until("prometheus ready", lambda: proc.poll() is None and httpx.get(f"{url}/-/ready").is_success)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode not in (0, -15):
            print((tmp_path / "prometheus.log").read_text(errors="replace")[-3000:])


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)")
def test_real_prometheus_scrapes_the_daemon_and_loads_the_rules(daemon: DaemonProcess, prometheus: str):
    _traffic(daemon.url)
    up = _until("up{job=distill-watchdog}", lambda: _query(prometheus, f'up{{job="{SCRAPE_JOB}"}} == 1'))
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{daemon.port}"

    series = _until(
        "watchdog_requests_total in Prometheus",
        lambda: _query(prometheus, f'watchdog_requests_total{{job="{SCRAPE_JOB}", route="/v1/predict"}}'),
    )
    codes = {s["metric"]["code"] for s in series}
    assert "200" in codes
    _until("the 422 answer", lambda: {"200", "422"} <= {
        s["metric"]["code"] for s in _query(prometheus, 'watchdog_requests_total{route="/v1/predict"}')
    })  # fmt: skip
    version = httpx.get(f"{daemon.url}/v2/models/student").json()["versions"][0]
    info = _until("watchdog_model_info", lambda: _query(prometheus, "watchdog_model_info == 1"))
    assert info[0]["metric"]["version"] == version

    # The rule files load in the real server, and the serving alerts are quiet on a healthy daemon.
    loaded = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    names = {r["name"] for g in loaded for r in g["rules"]}
    assert names == {r["alert"] for r in rules()}
    by_name = {r["alert"]: r["expr"] for r in rules()}
    for alert in ("WatchdogScrapeMissing", "WatchdogDown", "WatchdogNoModelLoaded", "WatchdogHighErrorRate"):
        assert _query(prometheus, by_name[alert]) == [], alert
    # A latency quantile over the scraped histogram (since start) is a number.
    buckets = 'watchdog_request_duration_seconds_bucket{route="/v1/predict"}'
    promql = f"histogram_quantile(0.99, sum by (le) ({buckets}))"
    quantile = _until("p99 from the scraped histogram", lambda: _query(prometheus, promql))
    assert 0 < float(quantile[0]["value"][1]) < float("inf")


# --- several replicas on one PostgreSQL -----------------------------------------------------------


def _served_version(url: str) -> str:
    answer = httpx.post(f"{url}/v1/predict", json={"inputs": [[0.1] * 40]}, timeout=5)
    answer.raise_for_status()
    return answer.json()["model_version"]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_on_postgres_follow_an_activation_made_through_either(
    tmp_path: Path, pg_url: str, model_files: Callable[..., tuple[Path, Path]]
):
    # One config for both, as deploy/compose and deploy/k8s run them: same database, same data_dir
    # (student files live in data_dir/models), a port of their own from the environment.
    config = _daemon_config(tmp_path, model_files, store={"url": pg_url, "poll_interval_s": 0.2})
    port_a, port_b = free_port(), free_port()
    a = DaemonProcess(config, env={"WATCHDOG__SERVER__PORT": str(port_a)}, port=port_a)
    b = DaemonProcess(config, env={"WATCHDOG__SERVER__PORT": str(port_b)}, port=port_b)
    with a, b:
        first = _served_version(a.url)
        assert _served_version(b.url) == first
        for replica in (a, b):
            assert httpx.get(f"{replica.url}/v2/health/ready").status_code == 200

        # Upload and activate a new student through replica A only ...
        model, card = model_files("student-v2", seed=7)
        with model.open("rb") as fm, card.open("rb") as fc:
            answer = httpx.post(
                f"{a.url}/admin/models", params={"activate": "true"},
                files={"model": ("student.onnx", fm), "card": ("card.json", fc)},
                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
            )  # fmt: skip
        assert answer.status_code == 201, answer.text
        second = answer.json()["version"]
        assert second != first
        assert _served_version(a.url) == second
        # ... and replica B serves it within its poll interval.
        _until("replica B serves the new version", lambda: _served_version(b.url) == second, timeout=30)
        assert f'watchdog_model_info{{version="{second}"}} 1.0' in httpx.get(f"{b.url}/metrics").text

        # The other way round: activate the first version through B; A follows.
        answer = httpx.post(
            f"{b.url}/admin/models/{first}/activate", json={"reason": "deploy test"},
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        _until("replica A serves the first version", lambda: _served_version(a.url) == first, timeout=30)
        listed = httpx.get(f"{a.url}/admin/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert {m["version"] for m in listed["models"]} == {first, second}
        assert listed["active"] == first


@pytest.mark.postgres
def test_only_one_replica_runs_the_scheduler():
    pytest.skip("the leader lock for the scheduler comes with the monitor/policy loop (issue 5)")
