"""Prometheus config, alert rules (promtool), Alertmanager config, Grafana dashboard and provisioning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from .files import (
    ALERTMANAGER,
    COMPOSE,
    DASHBOARDS,
    DOCS,
    GRAFANA,
    K8S,
    PROMETHEUS,
    PROMQL_BUILTINS,
    RULE_TESTS,
    RULES,
    SCRAPE_JOB,
    dashboard_exprs,
    load_yaml,
    metric_names,
    registry_names,
    rules,
)

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)"
)

# What issue 6 asks the rules to cover, each by at least one alert watching these series.
REQUIRED_COVERAGE = {
    "drift": "watchdog_drift_share",
    "calibration": "watchdog_ece",
    "agreement": "watchdog_agreement",
    "weak slices": "watchdog_weak_slices",
    "teacher version change": "watchdog_teacher_version_changes_total",
    "samples dropped": "watchdog_samples_total",
    "teacher errors": "watchdog_teacher_requests_total",
    "distill failures": "watchdog_distill_runs_total",
    "serving error rate": "watchdog_requests_total",
    "serving latency": "watchdog_request_duration_seconds_bucket",
}
CONTRACT_METRICS = {
    "watchdog_requests_total", "watchdog_request_duration_seconds_bucket", "watchdog_batch_size_bucket",
    "watchdog_model_info", "watchdog_samples_total", "watchdog_teacher_version_info",
    "watchdog_teacher_version_changes_total", "watchdog_agreement", "watchdog_ece", "watchdog_drift_share",
    "watchdog_weak_slices", "watchdog_distill_runs_total", "watchdog_promotions_total",
}  # fmt: skip


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_accepts_the_prometheus_config():
    out = _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_accepts_the_rules():
    out = _promtool("check", "rules", *map(str, RULES))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_rule_unit_tests_pass():
    assert RULE_TESTS
    out = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_unit_tested_firing():
    tested = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert {r["alert"] for r in rules() if "alert" in r} <= tested


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (Debian package prometheus-alertmanager)")
def test_amtool_accepts_the_alertmanager_config():
    out = subprocess.run(
        [AMTOOL, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_alertmanager_routes_every_severity_the_rules_use():
    config = load_yaml(ALERTMANAGER)
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    for route in config["route"].get("routes", []):
        assert route["receiver"] in receivers
    severities = {r["labels"]["severity"] for r in rules()}
    assert severities <= {"critical", "warning", "info"}


def test_rules_are_annotated_and_runbooks_exist():
    docs = DOCS.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", docs, re.M)}  # fmt: skip
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules():
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), rule["alert"]
        assert rule["labels"]["severity"], rule["alert"]
        url = ann["runbook_url"]
        assert url.startswith("https://") and "/docs/deploy.md#" in url, url
        anchor = url.rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower(), url
        assert anchor in anchors, f"docs/deploy.md has no runbook heading for {rule['alert']}"


def test_rules_cover_what_the_issue_lists_and_name_only_real_metrics():
    known = registry_names() | PROMQL_BUILTINS
    watched: set[str] = set()
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used <= known, f"{rule['alert']}: unknown metrics {used - known}"
        watched |= used
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job == SCRAPE_JOB
    for what, metric in REQUIRED_COVERAGE.items():
        assert metric in watched, f"no alert on {what} ({metric})"
    assert any("absent(up" in r["expr"] for r in rules()), "no alert for a missing scrape"
    assert any(re.search(r"\bup\{[^}]*\} == 0", r["expr"]) for r in rules()), "no alert for a failed scrape"


def test_quality_thresholds_match_the_policy_defaults():
    from distill_watchdog.config import PolicyConfig

    policy = PolicyConfig()
    by_name = {r["alert"]: r["expr"] for r in rules()}
    assert by_name["WatchdogAgreementLow"].endswith(f"< {policy.min_agreement:g}")
    assert by_name["WatchdogCalibrationDegraded"].endswith(f"> {policy.max_ece:g}")
    assert by_name["WatchdogDriftDetected"].endswith(f"> {policy.max_drift_share:g}")


def test_prometheusrule_for_kubernetes_holds_the_same_rules():
    import importlib.util

    path = K8S / "monitoring" / "render_prometheusrule.py"
    spec = importlib.util.spec_from_file_location("render_prometheusrule", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader
    spec.loader.exec_module(module)
    rendered = (K8S / "monitoring" / "prometheusrule.yaml").read_text()
    assert rendered == module.render(), "run: python deploy/k8s/monitoring/render_prometheusrule.py"
    groups = load_yaml(K8S / "monitoring" / "prometheusrule.yaml")["spec"]["groups"]
    assert groups == [g for p in RULES for g in load_yaml(p)["groups"]]


# --- Grafana ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard():
    assert len(DASHBOARDS) == 1
    return json.loads(DASHBOARDS[0].read_text())


def test_dashboard_queries_name_only_real_metrics_and_cover_the_contract(dashboard):
    known = registry_names() | PROMQL_BUILTINS
    used: set[str] = set()
    for expr in dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names <= known, f"unknown metrics {names - known} in {expr}"
        used |= names
    assert used >= CONTRACT_METRICS, f"not on the dashboard: {CONTRACT_METRICS - used}"


def test_dashboard_shows_each_area_of_the_issue(dashboard):
    rows = [p["title"].lower() for p in dashboard["panels"] if p["type"] == "row"]
    for area in (
        "serving",
        "sampling",
        "teachers",
        "agreement",
        "calibration",
        "drift",
        "runs",
        "promotions",
    ):
        assert any(area in r for r in rows), f"no row about {area}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for what in ("per slice", "teacher versions", "promotions"):
        assert what in titles


def test_dashboard_is_well_formed(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert SCRAPE_JOB in variables["instance"]["definition"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not (area & cells), f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_grafana_provisioning_matches_the_compose_mounts():
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith(".")}
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "distill-watchdog.yml")["providers"]
    path = providers[0]["options"]["path"]
    assert (COMPOSE.parent / mounts[path]).resolve() == (GRAFANA / "dashboards").resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (GRAFANA / "dashboards" / home.rsplit("/", 1)[1]).exists()
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert datasources[0]["type"] == "prometheus"
    assert (
        datasources[0]["url"] == "http://prometheus:9090" and "prometheus" in load_yaml(COMPOSE)["services"]
    )
    for sub in ("datasources", "dashboards"):
        assert f"/etc/grafana/provisioning/{sub}" in mounts
