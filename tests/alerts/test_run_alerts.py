"""Alerts of runs and of the policy's ceiling block: one alert per state change of a run with the
stop verdict riding on it; the ceiling block is one alert labelled with its run, sent once, resolved."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson
import pytest
from loop.helpers import seed_samples

from distill_watchdog.alerts import Alerter
from distill_watchdog.config import load_settings
from distill_watchdog.loop.policy import Decision
from distill_watchdog.loop.scheduler import Scheduler
from distill_watchdog.store import Store
from distill_watchdog.store.tables import DistillRun

from .servers import Webhook
from .trainer import ceiling_trainer
from support import ServerThread, eventually

AUTH = {"Authorization": "Bearer s3cret-token-for-tests"}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_promoted_run_sends_its_states_once_with_the_ceiling_verdict_on_them(
    make_settings, model_files, tmp_path: Path
) -> None:
    model, card = model_files()
    hook = Webhook()
    settings = make_settings(
        student={"model": str(model), "card": str(card)},
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        alerts={"webhook_urls": [hook.url], "backoff_s": 0.05},
        monitor={"interval_s": 3600, "leader_poll_s": 0.2},
        policy={"auto_promote": True},
        distill=ceiling_trainer(tmp_path, model, card),
    )
    try:
        with ServerThread(settings, components=[Alerter(settings.alerts), Scheduler()]) as srv:
            parent = srv.daemon.models.current.version
            seed_samples(srv.daemon.store, parent, n=300)
            answer = httpx.post(f"{srv.url}/admin/runs", json={"weak_slices": []}, headers=AUTH, timeout=30)
            assert answer.status_code == 202, answer.text
            run_id = answer.json()["id"]

            def status() -> str:
                return httpx.get(f"{srv.url}/admin/runs/{run_id}", headers=AUTH).json()["status"]

            # auto_promote: `pending` lasts only until the promotion
            eventually(lambda: status() not in ("running", "pending"), timeout=180, what="run finished")
            run = httpx.get(f"{srv.url}/admin/runs/{run_id}", headers=AUTH).json()
            assert run["status"] == "promoted"
            # The parent's card does not name its architecture: the run and its report say so.
            assert run["detail"]["build"]["student_source"] == "default"
            report = httpx.get(f"{srv.url}/ui/runs/{run_id}").text
            assert 'id="student-source"' in report and "not the parent's own" in report
            eventually(lambda: "WatchdogPromotion" in [a["labels"]["alertname"] for a in hook.received])
            promoted = srv.daemon.models.current.version
            assert promoted != parent
    finally:
        hook.close()
    sent = [(a["labels"]["alertname"], a["labels"].get("run")) for a in hook.received]
    assert sent == [("WatchdogRunStarted", run_id), ("WatchdogPromotion", run_id)]
    promotion = hook.received[1]
    assert promotion["labels"]["version"] == promoted
    assert promotion["annotations"]["stop_verdict"] == "ceiling_reached"


def _alerter_scheduler(tmp_path: Path, **monitor: object) -> tuple[Alerter, Scheduler, Store]:
    settings = load_settings(
        None,
        data_dir=str(tmp_path),
        monitor=monitor,
        teachers=[{"name": "big", "kind": "onnx", "location": "t"}],
    )
    store = Store(settings.store_url)
    alerter = Alerter(settings.alerts)  # not started: fire/resolve only touch memory and the queue
    scheduler = Scheduler()
    scheduler.daemon = SimpleNamespace(settings=settings, alerts=alerter, store=store)  # type: ignore[assignment]
    return alerter, scheduler, store


def _weak(label: str, agreement: float) -> dict[str, object]:
    return {"slice": label, "n": 300, "agreement": agreement, "rest_agreement": 0.95, "expected_gain": 0.1}


def test_weak_slices_are_one_alert_each_bounded_and_resolved_per_slice(tmp_path: Path) -> None:
    alerter, scheduler, _ = _alerter_scheduler(tmp_path, top_slices=2)

    def firing() -> dict[str, dict[str, str]]:
        return {a["slice"]: a for a in alerter.firing("WatchdogWeakSlices")}

    async def scenario() -> None:
        weak = [_weak("s=c", 0.5), _weak("s=d", 0.6), _weak("s=e", 0.7)]
        scheduler._alerts({"weak_slices": weak, "overall": {}})
        assert firing().keys() == {"s=c", "s=d"}  # top-K, like the gauges
        assert firing()["s=c"]["teacher"] == "big"
        sent = alerter.queue.qsize()
        scheduler._alerts({"weak_slices": [_weak("s=d", 0.55)], "overall": {}})  # new numbers, same labels
        assert firing().keys() == {"s=d"}
        resolved = [alerter.queue.get_nowait() for _ in range(alerter.queue.qsize())][sent:]
        assert [(a.labels["slice"], a.ends_at is not None) for a in resolved] == [("s=c", True)]
        key = next(k for k, a in alerter.active.items() if a.labels["slice"] == "s=d")
        assert alerter.active[key].annotations["agreement"] == "0.55"  # goes out with the next refresh
        scheduler._alerts({"weak_slices": [], "overall": {}})
        assert firing() == {}

    asyncio.run(scenario())


def test_the_ceiling_block_is_one_alert_naming_its_run(tmp_path: Path) -> None:
    alerter, scheduler, store = _alerter_scheduler(tmp_path)
    now = time.time()
    for run_id, verdict in (("old", "ceiling_reached"), ("new", "ceiling_reached"), ("newest", None)):
        store.add_run(
            DistillRun(
                id=run_id,
                created_at=now + len(run_id),
                updated_at=now,
                status="failed" if verdict is None else "rejected",
                detail_json=orjson.dumps({"stop": {"verdict": verdict}}).decode(),
            )
        )

    async def scenario() -> None:
        for cycle in range(3):  # the reason's text changes every cycle: still one alert, sent once
            blocked = Decision("blocked", f"weak slices; ceiling reached (cycle {cycle})", {"ceiling": True})
            await scheduler._ceiling_alert(blocked)
        assert [a["run"] for a in alerter.firing("WatchdogCeilingReached")] == ["new"]
        assert alerter.queue.qsize() == 1
        await scheduler._ceiling_alert(Decision("trigger", "weak slices", {}))
        assert alerter.firing("WatchdogCeilingReached") == []
        assert alerter.queue.qsize() == 2

    asyncio.run(scenario())
