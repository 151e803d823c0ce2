"""Real parts: a real Prometheus scrapes a real daemon; two daemons share one PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .files import ALERTMANAGER, RULES, SCRAPE_JOB, final_stage, load_yaml, rules
from support import DaemonProcess, free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
TOKEN = "deploy-test-token"
STARTUP_TIMEOUT = 180.0  # deadlines, not timings: CI machines are small and shared


def _until(what: str, check: Callable[[], Any], timeout: float = 180.0, every: float = 0.2) -> Any:
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


def _answers(proc: DaemonProcess, path: str) -> bool:
    assert proc.proc is not None
    if proc.proc.poll() is not None:
        raise RuntimeError(f"daemon exited:\n{proc.log()[-3000:]}")
    return httpx.get(f"{proc.url}{path}", timeout=2).status_code == 200


def _start(proc: DaemonProcess) -> None:
    """Starts the daemon and waits until it is ready (a generous deadline for loaded machines)."""
    proc.start(wait=False)
    _until(f"daemon on port {proc.port} ready", lambda: _answers(proc, "/v2/health/ready"), STARTUP_TIMEOUT)


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
    proc = DaemonProcess(config, port=port)
    try:
        _start(proc)
        yield proc
    finally:
        proc.stop()


@pytest.mark.slow
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


def _upload_and_activate(url: str, model: Path, card: Path) -> str:
    """`POST /admin/models?activate=true` (multipart upload); returns the new version."""
    with model.open("rb") as fm, card.open("rb") as fc:
        answer = httpx.post(
            f"{url}/admin/models", params={"activate": "true"},
            files={"model": ("student.onnx", fm), "card": ("card.json", fc)},
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
        )  # fmt: skip
    assert answer.status_code == 201, answer.text
    return answer.json()["version"]


def _healthcheck(port: int) -> int:
    """Runs the Dockerfile's HEALTHCHECK command (with this venv's python) against a port."""
    health = next(a for i, a in final_stage() if i == "HEALTHCHECK")
    argv = json.loads(health[health.index("CMD") + 3 :].strip())
    assert argv[0] == "python"
    env = {**os.environ, "WATCHDOG__SERVER__PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=120).returncode


@pytest.mark.slow
def test_image_healthcheck_command_follows_readiness(tmp_path: Path, model_files):
    # no student configured: the daemon is live but not ready, so the container is unhealthy
    config = _daemon_config(tmp_path, model_files)
    data = yaml.safe_load(config.read_text())
    del data["student"]
    config.write_text(yaml.safe_dump(data))
    port = data["server"]["port"]
    proc = DaemonProcess(config, port=port).start(wait=False)
    try:
        _until("daemon live", lambda: _answers(proc, "/v2/health/live"), timeout=STARTUP_TIMEOUT)
        assert httpx.get(f"{proc.url}/v2/health/ready").status_code == 503
        assert _healthcheck(port) != 0
        _upload_and_activate(proc.url, *model_files())
        assert _healthcheck(port) == 0
    finally:
        proc.stop()
    assert _healthcheck(free_port()) != 0  # nothing listening


@contextlib.contextmanager
def _server(name: str, argv: list[str], port: int, workdir: Path) -> Iterator[str]:
    """A real Prometheus or Alertmanager on a loopback port, stopped (SIGTERM) at the end."""
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        return httpx.get(f"{url}/-/ready").is_success

    try:
        _until(f"{name} ready", ready)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _prometheus(tmp_path: Path, config: dict[str, Any]) -> contextlib.AbstractContextManager[str]:
    assert PROMETHEUS
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        **config,
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    argv = [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            "--rules.alert.resend-delay=1s"]  # fmt: skip
    return _server("prometheus", argv, port, tmp_path)


@pytest.fixture
def prometheus(tmp_path: Path, daemon: DaemonProcess) -> Iterator[str]:
    """A real Prometheus scraping the daemon every second, with the rules of deploy/prometheus."""
    config = {
        "rule_files": [str(p) for p in RULES],
        "scrape_configs": [
            {"job_name": SCRAPE_JOB, "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]},
        ],
    }
    with _prometheus(tmp_path, config) as url:
        yield url


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


@pytest.mark.slow
@pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER_BIN is None, reason="prometheus or alertmanager not installed"
)
def test_alerts_reach_alertmanager_and_are_routed_by_severity(tmp_path: Path):
    """Prometheus -> the real Alertmanager on deploy/alertmanager/alertmanager.yml -> receivers."""
    assert ALERTMANAGER_BIN
    am_port = free_port()
    am_argv = [ALERTMANAGER_BIN, f"--config.file={ALERTMANAGER}", f"--storage.path={tmp_path / 'am'}",
               f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
               "--log.level=warn"]  # fmt: skip
    # Alerts that fire at once, one per severity the rules use (ours wait minutes by design).
    severities = sorted({r["labels"]["severity"] for r in rules()})
    probe_rules = tmp_path / "probe.rules.yml"
    probe_rules.write_text(yaml.safe_dump({"groups": [{"name": "probe", "rules": [
        {"alert": f"DeployProbe{s.title()}", "expr": "vector(1)", "labels": {"severity": s},
         "annotations": {"summary": "probe"}} for s in severities
    ]}]}))  # fmt: skip
    config = {
        "rule_files": [str(probe_rules), *map(str, RULES)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
    }
    routes = load_yaml(ALERTMANAGER)["route"]
    expected = {r["matchers"][0].split("=")[1].strip().strip('"'): r["receiver"] for r in routes["routes"]}
    with _server("alertmanager", am_argv, am_port, tmp_path) as am, _prometheus(tmp_path, config):

        def routed() -> dict[str, list[str]]:
            alerts = httpx.get(f"{am}/api/v2/alerts", timeout=5).json()
            got = {a["labels"]["severity"]: [r["name"] for r in a["receivers"]] for a in alerts
                   if a["labels"]["alertname"].startswith("DeployProbe")}  # fmt: skip
            return got if set(got) == set(severities) else {}

        got = _until("probe alerts in Alertmanager", routed)
    for severity in severities:
        assert got[severity] == [expected.get(severity, routes["receiver"])], severity


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
    try:
        for replica in (a, b):  # one after the other: the first seeds the registry from the config
            _start(replica)
        first = _served_version(a.url)
        assert _served_version(b.url) == first
        for replica in (a, b):
            assert httpx.get(f"{replica.url}/v2/health/ready").status_code == 200

        # Upload and activate a new student through replica A only ...
        second = _upload_and_activate(a.url, *model_files("student-v2", seed=7))
        assert second != first
        assert _served_version(a.url) == second
        # ... and replica B serves it within its poll interval.
        _until("replica B serves the new version", lambda: _served_version(b.url) == second)
        assert f'watchdog_model_info{{version="{second}"}} 1.0' in httpx.get(f"{b.url}/metrics").text

        # The other way round: activate the first version through B; A follows.
        answer = httpx.post(
            f"{b.url}/admin/models/{first}/activate", json={"reason": "deploy test"},
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        _until("replica A serves the first version", lambda: _served_version(a.url) == first)
        listed = httpx.get(f"{a.url}/admin/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert {m["version"] for m in listed["models"]} == {first, second}
        assert listed["active"] == first
    finally:
        b.stop()
        a.stop()


def _leader_values(urls: list[str]) -> list[float] | None:
    """`watchdog_leader` of each replica, or None while the daemon does not export it."""
    values = []
    for url in urls:
        lines = [ln for ln in httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
                 if ln.startswith("watchdog_leader ")]  # fmt: skip
        if not lines:
            return None
        values.append(float(lines[0].split()[1]))
    return values


@pytest.mark.slow
@pytest.mark.postgres
def test_only_one_replica_runs_the_scheduler(
    tmp_path: Path, pg_url: str, model_files: Callable[..., tuple[Path, Path]]
):
    config = _daemon_config(tmp_path, model_files, store={"url": pg_url, "poll_interval_s": 0.2})
    ports = [free_port(), free_port()]
    replicas = [DaemonProcess(config, env={"WATCHDOG__SERVER__PORT": str(p)}, port=p) for p in ports]
    try:
        for replica in replicas:
            _start(replica)
        urls = [r.url for r in replicas]
        if _leader_values(urls) is None:
            pytest.skip(
                "the daemon exports no watchdog_leader yet (leader lock: monitor/policy loop, issue 5)"
            )
        # exactly one leader, and it stays one (checked over several polls, not timed)
        for _ in range(5):
            values = _until("one leader", lambda: (v := _leader_values(urls)) and sum(v) == 1 and v)
            assert sorted(values) == [0.0, 1.0]
        # the leader goes away: the other replica takes over
        leader = replicas[values.index(1.0)]
        other = replicas[1 - values.index(1.0)]
        leader.stop()
        _until("the other replica leads", lambda: _leader_values([other.url]) == [1.0])
    finally:
        for replica in replicas:
            replica.stop()
