"""The daemon is one typed container built before any component starts; no process-wide state
carries from one daemon (or test) to the next."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from distill_watchdog import metrics
from distill_watchdog.alerts import Alerter
from distill_watchdog.app import build_daemon, create_app
from distill_watchdog.config import load_settings
from distill_watchdog.loop.runs import RunManager
from distill_watchdog.loop.scheduler import Scheduler


def test_what_components_share_exists_before_any_starts_in_either_order(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    for first_scheduler in (True, False):
        alerter, scheduler = Alerter(settings.alerts), Scheduler()
        order = [scheduler, alerter] if first_scheduler else [alerter, scheduler]
        daemon = build_daemon(settings, order)
        assert daemon.scheduler is scheduler and daemon.alerts is alerter
        assert isinstance(daemon.runs, RunManager) and daemon.runs.daemon is daemon
    assert build_daemon(settings).runs is None  # no scheduler: the admin API says so (409)


def test_a_tracked_gauge_sums_the_running_owners_and_forgets_a_stopped_one() -> None:
    gauge = metrics.requests_in_flight
    metrics.track(gauge, "a", lambda: 2)
    metrics.track(gauge, "b", lambda: 3)
    assert metrics.REGISTRY.get_sample_value("watchdog_requests_in_flight") == 5
    metrics.untrack(gauge, "a")
    assert metrics.REGISTRY.get_sample_value("watchdog_requests_in_flight") == 3
    metrics.untrack(gauge, "b")
    assert metrics.REGISTRY.get_sample_value("watchdog_requests_in_flight") == 0


def test_a_daemon_counts_its_requests_in_flight_only_while_it_runs(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    app = create_app(settings)
    assert metrics.REGISTRY.get_sample_value("watchdog_requests_in_flight") == 0
    with TestClient(app):
        app.in_flight = 7  # as if seven requests were being answered
        assert metrics.REGISTRY.get_sample_value("watchdog_requests_in_flight") == 7
    assert metrics.REGISTRY.get_sample_value("watchdog_requests_in_flight") == 0


def test_each_test_starts_with_no_counts() -> None:
    """The autouse fixture (conftest.py) resets the one registry: counts of earlier tests are gone."""
    assert metrics.REGISTRY.get_sample_value("watchdog_promotions_total", {"mode": "auto"}) is None
    metrics.promotions_total.labels(mode="auto").inc()
    metrics.leader.set(1)
    metrics.reset()
    assert metrics.REGISTRY.get_sample_value("watchdog_promotions_total", {"mode": "auto"}) is None
    assert metrics.REGISTRY.get_sample_value("watchdog_leader") == 0
