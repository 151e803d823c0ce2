"""A real daemon's alerts in a real Alertmanager running deploy/alertmanager/alertmanager.yml plus
routes by label: one alert per weak slice routed by `slice` and resolved per slice; a teacher's
version change routed by `teacher` and inhibiting that teacher's quality alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from distill_watchdog.server import default_components

from .servers import ALERTMANAGER, Alertmanager, Webhook
from .traffic import SliceTraffic
from shadow.helpers import daemon_settings, eventually, teacher_config
from support import ServerThread
from teachers.fake_teacher import FakeTeacher

DEPLOY_AM = Path(__file__).resolve().parents[2] / "deploy" / "alertmanager" / "alertmanager.yml"


def _config(hook: Webhook) -> dict[str, Any]:
    """The shipped config with webhook receivers, short waits, and two routes by label first."""
    config = yaml.safe_load(DEPLOY_AM.read_text())
    route = config["route"]
    route.update(group_wait="1s", group_interval="1s")
    route["routes"] = [
        {"receiver": "sensor-c-owners", "matchers": ['slice="sensor=c"'], "group_by": ["alertname", "slice"]},
        {
            "receiver": "big-teacher-owners",
            "matchers": ['alertname="WatchdogTeacherVersionChanged"', 'teacher="big"'],
        },
        *route["routes"],
    ]
    names = [r["name"] for r in config["receivers"]] + ["sensor-c-owners", "big-teacher-owners"]
    config["receivers"] = [
        {"name": n, "webhook_configs": [{"url": f"{hook.base}/{n}", "send_resolved": True}]} for n in names
    ]
    return config


def _by_slice(am: Alertmanager, state: str = "active") -> dict[str, dict[str, Any]]:
    return {a["labels"]["slice"]: a for a in am.alerts("WatchdogWeakSlices", state)}


def _notified(hook: Webhook, receiver: str, alertname: str) -> list[dict[str, Any]]:
    return [
        alert
        for body in hook.at(f"/{receiver}")
        for alert in body["alerts"]
        if alert["labels"]["alertname"] == alertname
    ]


@pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager is not installed")
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_alertmanager_routes_by_slice_and_teacher_and_inhibits_quality_alerts(
    make_settings, model_files, tmp_path: Path
) -> None:
    hook = Webhook()
    am = Alertmanager(tmp_path, _config(hook))
    traffic = SliceTraffic()
    try:
        with FakeTeacher(version="v1") as teacher:
            settings = daemon_settings(
                make_settings,
                model_files,
                [teacher_config(teacher.url)],
                # Resolutions go out at once (not held for the default 60-s notice).
                alerts={"alertmanager_url": am.url, "backoff_s": 0.05, "repeat_s": 2, "min_notice_s": 0},
                monitor={"interval_s": 1.0, "window": 400, "min_rows": 50, "leader_poll_s": 0.2},
                policy={"min_samples": 40, "max_runs_per_day": 0},  # monitor only: no run starts
                slices={"keys": ["sensor"]},
            )
            with ServerThread(settings, default_components(settings)) as srv:
                for sensor, agree in (("a", True), ("b", True), ("c", False), ("d", False)):
                    traffic.send(srv.url, sensor, 100, agree)
                # One alert per weak slice, `slice` and `teacher` as labels; routed by slice.
                weak = eventually(
                    lambda: (found := _by_slice(am)).keys() == {"sensor=c", "sensor=d"} and found,
                    timeout=120,
                    what="a WatchdogWeakSlices alert per weak slice",
                )
                assert weak["sensor=c"]["labels"]["teacher"] == "big"
                assert "agreement" in weak["sensor=c"]["annotations"]
                assert [r["name"] for r in weak["sensor=c"]["receivers"]] == ["sensor-c-owners"]
                assert [r["name"] for r in weak["sensor=d"]["receivers"]] == ["ml-oncall"]
                eventually(
                    lambda: _notified(hook, "sensor-c-owners", "WatchdogWeakSlices"),
                    what="sensor c's owners notified",
                )
                assert all(
                    a["labels"]["slice"] == "sensor=c"
                    for a in _notified(hook, "sensor-c-owners", "WatchdogWeakSlices")
                )

                # Sensor d recovers (the window holds only newer rows): its alert alone resolves.
                for sensor, agree in (("a", True), ("b", True), ("c", False), ("d", True)):
                    traffic.send(srv.url, sensor, 100, agree)
                eventually(
                    lambda: _by_slice(am).keys() == {"sensor=c"}, timeout=120, what="sensor d resolved alone"
                )

                # The teacher changes version: its owners hear of it, and its quality alerts are
                # inhibited while the change awaits acceptance.
                teacher.version, teacher.shift = "v2", 1  # re-evaluation fails: stays quarantined
                traffic.send(srv.url, "a", 20, True)
                changed = eventually(
                    lambda: am.alerts("WatchdogTeacherVersionChanged"), what="version change in Alertmanager"
                )
                assert changed[0]["labels"]["teacher"] == "big" and changed[0]["labels"]["version"] == "v2"
                assert [r["name"] for r in changed[0]["receivers"]] == ["big-teacher-owners"]
                inhibited = eventually(
                    lambda: _by_slice(am, "suppressed").get("sensor=c"), what="sensor c inhibited"
                )
                assert inhibited["status"]["inhibitedBy"]
                eventually(
                    lambda: _notified(hook, "big-teacher-owners", "WatchdogTeacherVersionChanged"),
                    what="the teacher's owners notified",
                )
    finally:
        am.stop()
        hook.close()
