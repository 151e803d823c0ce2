"""Alerts reach a real Alertmanager (v2 API) and a JSON webhook; retries, resolve, duplicate suppression."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from distill_watchdog import metrics
from distill_watchdog.alerts import Alerter
from distill_watchdog.config import AlertsConfig
from distill_watchdog.server import default_components

from .servers import ALERTMANAGER, Alertmanager, Webhook
from shadow.helpers import ADMIN, daemon_settings, eventually, predict, teacher_config
from support import ServerThread, free_port, get_pin
from teachers.fake_teacher import FakeTeacher


def _alerts(name: str, receiver: str, outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("watchdog_alerts_total", {"receiver": receiver, "outcome": outcome})
        or 0
    )


def test_alertmanager_and_webhook_receive_fire_and_resolve(alertmanager: Alertmanager) -> None:
    hook = Webhook(failures=1)
    cfg = AlertsConfig(
        alertmanager_url=alertmanager.url, webhook_urls=[hook.url], backoff_s=0.01, repeat_s=1, min_notice_s=0
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
        await asyncio.sleep(1.1)  # past its shortest life (notice_s = repeat_s = 1 s): ends at once
        alerter.resolve("WatchdogTestAlert", labels)
        await alerter.stop()

    asyncio.run(scenario())
    assert _alerts("", "all", "suppressed") - suppressed_before == 1
    assert _alerts("", "webhook", "failed") == failed_before  # the 500 was retried, then delivered
    statuses = [m["status"] for m in hook.received]  # firing, re-sent while it fires, resolved
    assert statuses[0] == "firing" and statuses[-1] == "resolved" and set(statuses[1:-1]) <= {"firing"}
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
            alerts={"alertmanager_url": alertmanager.url, "repeat_s": 1, "min_notice_s": 0},
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
    # Resolved within their first notice_s (60 s): each is sent again with its end time then.
    assert [(m["labels"]["run"], m["status"], "endsAt" in m) for m in hook.received] == [
        ("r1", "firing", False),
        ("r2", "firing", False),
        ("r1", "firing", True),
        ("r2", "firing", True),
    ]
    hook.close()


def test_an_alert_resolved_at_once_lives_its_notice(alertmanager: Alertmanager) -> None:
    """Resolved right after it fired, an alert still lives max(repeat_s, min_notice_s): sent at
    once with that end (Alertmanager keeps it active until then), then resolved."""
    hook = Webhook()
    assert Alerter(AlertsConfig(repeat_s=60, min_notice_s=3)).notice_s == 60  # the longer of the two
    cfg = AlertsConfig(alertmanager_url=alertmanager.url, webhook_urls=[hook.url], repeat_s=1, min_notice_s=3)
    labels = {"severity": "critical"}

    async def scenario() -> None:
        alerter = Alerter(cfg)
        await alerter.start(None)
        assert alerter.notice_s == 3
        alerter.fire("WatchdogShortLived", labels, {"summary": "changed and accepted at once"})
        alerter.resolve("WatchdogShortLived", labels)
        await alerter.queue.join()
        assert await asyncio.to_thread(alertmanager.alerts, "WatchdogShortLived")  # still active there
        assert [m["status"] for m in hook.received] == ["firing", "firing"]  # the second names its end
        alert = hook.received[1]
        assert "endsAt" in alert and "endsAt" not in hook.received[0]
        await asyncio.to_thread(
            eventually, lambda: hook.received[-1]["status"] == "resolved", 10, "resolved after its notice"
        )
        await alerter.stop()

    asyncio.run(scenario())
    eventually(lambda: alertmanager.alerts("WatchdogShortLived") == [], what="ended in Alertmanager")
    hook.close()


def _notified(hook: Webhook, name: str) -> list[dict[str, Any]]:
    """Alerts `name` in the notifications Alertmanager sent to the hook, with their status."""
    return [
        {"status": group["status"], **alert}
        for group in list(hook.received)
        for alert in group.get("alerts", [])
        if alert["labels"].get("alertname") == name
    ]


@pytest.mark.slow
def test_a_version_accepted_by_reevaluation_still_notifies_through_alertmanager(
    tmp_path: Path, make_settings, model_files
) -> None:
    """`reevaluate` accepts a version with identical answers within a fraction of a second; the
    notice must still outlive Alertmanager's group_wait and reach a receiver."""
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)")
    hook = Webhook()
    am = Alertmanager(
        tmp_path,
        {
            "route": {
                "receiver": "hook",
                "group_wait": "3s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "hook", "webhook_configs": [{"url": hook.url, "send_resolved": True}]}],
        },
    )
    try:
        with FakeTeacher(version="v1") as teacher:
            settings = daemon_settings(
                make_settings,
                model_files,
                [teacher_config(teacher.url)],
                sampling={"eval_set_size": 8, "on_teacher_change": "reevaluate"},
                alerts={"alertmanager_url": am.url, "repeat_s": 2, "min_notice_s": 6},
            )
            with ServerThread(settings, default_components(settings)) as server:
                store = server.daemon.store
                predict(server.url, rows=8)
                eventually(lambda: store.eval_count("big") == 8, what="eval set frozen")
                teacher.version = "v2"  # identical answers: re-evaluation passes, the pin moves at once
                predict(server.url, rows=4, seed=1)
                eventually(
                    lambda: get_pin(store, "big").pinned_version == "v2", what="accepted automatically"
                )
                fired = eventually(
                    lambda: [
                        a for a in _notified(hook, "WatchdogTeacherVersionChanged") if a["status"] == "firing"
                    ],
                    timeout=20,
                    what="a notification from Alertmanager",
                )
                assert fired[0]["labels"]["teacher"] == "big"
                assert fired[0]["annotations"]["new_version"] == "v2"
                assert fired[0]["annotations"]["policy"] == "reevaluate"
                eventually(
                    lambda: any(
                        a["status"] == "resolved" for a in _notified(hook, "WatchdogTeacherVersionChanged")
                    ),
                    timeout=20,
                    what="the resolution, after min_notice_s",
                )
    finally:
        am.stop()
        hook.close()


@pytest.mark.slow
def test_quarantined_change_keeps_firing_in_alertmanager_until_a_person_accepts(
    alertmanager: Alertmanager, make_settings, model_files
) -> None:
    """The default policy: a version with identical answers passes re-evaluation, yet its alert
    stays active in Alertmanager (re-sent every repeat_s), with the result attached, until
    accepted; its rows stay quarantined meanwhile."""
    with FakeTeacher(version="v1") as teacher:
        settings = daemon_settings(
            make_settings,
            model_files,
            [teacher_config(teacher.url)],
            sampling={"eval_set_size": 8},
            alerts={"alertmanager_url": alertmanager.url, "repeat_s": 1, "min_notice_s": 0},
        )
        with ServerThread(settings, default_components(settings)) as server:
            store = server.daemon.store
            predict(server.url, rows=8)
            eventually(lambda: store.eval_count("big") == 8, what="eval set frozen")
            teacher.version = "v2"
            predict(server.url, rows=4, seed=1)

            def passed() -> list[dict[str, Any]]:
                found = alertmanager.alerts("WatchdogTeacherVersionChanged")
                return [a for a in found if a["annotations"].get("reevaluation", "").startswith("passed")]

            first = eventually(passed, what="the alert with its passing re-evaluation")[0]
            assert (
                first["annotations"]["pinned_version"] == "v1" and first["annotations"]["new_version"] == "v2"
            )
            time.sleep(4)  # several repeat_s: still firing, still quarantined, pin unchanged
            assert passed()
            assert get_pin(store, "big").pinned_version == "v1"
            assert store.count_samples(quarantined=True) == 4
            reply = httpx.post(f"{server.url}/admin/teachers/big/accept", headers=ADMIN)
            assert reply.status_code == 200
            eventually(
                lambda: alertmanager.alerts("WatchdogTeacherVersionChanged") == [], what="resolved on accept"
            )
            assert store.count_samples(quarantined=True) == 0
