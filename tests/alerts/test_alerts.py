"""Alerts reach a real Alertmanager (v2 API) and a JSON webhook; retries, resolve, duplicate suppression."""

from __future__ import annotations

import asyncio

import httpx

from distill_watchdog import metrics
from distill_watchdog.alerts import Alerter
from distill_watchdog.config import AlertsConfig
from distill_watchdog.server import default_components

from .servers import Alertmanager, Webhook
from sampling.helpers import ADMIN, daemon_settings, eventually, predict, teacher_config
from support import ServerThread, free_port
from teachers.fake_teacher import FakeTeacher


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


def test_an_alert_is_its_labels_new_text_waits_for_the_refresh_and_resolve_matches_a_subset() -> None:
    hook = Webhook()
    cfg = AlertsConfig(webhook_urls=[hook.url], backoff_s=0.01, repeat_s=60)
    suppressed = _alerts("", "all", "suppressed")

    async def scenario() -> Alerter:
        alerter = Alerter(cfg)
        await alerter.start(None)
        for cycle in range(3):  # the summary changes every cycle, the labels do not
            alerter.fire("WatchdogThing", {"run": "r1"}, {"summary": f"cycle {cycle}"})
        alerter.fire("WatchdogThing", {"run": "r2"}, {"summary": "other run"})
        await alerter.queue.join()
        assert [a["labels"]["run"] for a in hook.received] == ["r1", "r2"]  # r1 once
        (r1,) = [a for a in alerter.active.values() if a.labels["run"] == "r1"]
        assert r1.annotations["summary"] == "cycle 2"  # sent with the next refresh
        assert alerter.resolve("WatchdogThing", {"run": "r1"}) == 1  # a subset of the labels
        assert [a["run"] for a in alerter.firing("WatchdogThing")] == ["r2"]
        assert alerter.resolve("WatchdogThing") == 1
        await alerter.stop()
        return alerter

    asyncio.run(scenario())
    assert _alerts("", "all", "suppressed") - suppressed == 2
    assert [(m["labels"]["run"], m["status"]) for m in hook.received] == [
        ("r1", "firing"),
        ("r2", "firing"),
        ("r1", "resolved"),
        ("r2", "resolved"),
    ]
    hook.close()
