"""Monitor numbers, weak slices and policy decisions on a real store (no daemon)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from distill_watchdog.config import PolicyConfig, load_settings
from distill_watchdog.loop import policy
from distill_watchdog.loop.monitor.cycle import run_cycle
from distill_watchdog.loop.monitor.stats import wilson
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store
from distill_watchdog.store.tables import DistillRun

from .helpers import seed_samples
from support import recent_samples


def test_wilson_interval_is_proper() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9


def _setup(tmp_path: Path, model_files, **monitor):
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        monitor={"min_rows": 50, **monitor},
        policy={"min_samples": 60},
    )
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir)
    model, card = model_files()
    info = registry.register_files(model, card)
    registry.record_activation(info.version, actor="test")
    return settings, store, registry, info.version


@pytest.mark.slow  # imports Evidently and runs its stat tests per slice
def test_cycle_measures_slices_and_drift(tmp_path: Path, model_files) -> None:
    settings, store, registry, version = _setup(tmp_path, model_files)
    x = seed_samples(store, version, n=900, shift_c=3.0, teacher_seed=0)  # teacher = student except on c
    np.savez(tmp_path / "ref.npz", x=x[:300] * 0)  # a reference far from the window: everything drifts
    settings.monitor.reference = tmp_path / "ref.npz"
    result = run_cycle(settings, store, registry)
    assert result["outcome"] == "ok" and result["rows"] == 900
    assert result["slices"]["sensor=a"]["agreement"] == 1.0  # same weights: identical answers off the shift
    assert result["overall"]["kl"] >= 0 and result["overall"]["teacher"]["ece"] is not None
    weak = result["weak_slices"]
    assert [w["slice"] for w in weak] == []  # teacher == student everywhere with seed 0
    assert result["drift"]["all"]["share"] > 0.5 and "sensor=b" in result["drift"]
    stored = store.recent_cycles(1)[0]
    summary = orjson.loads(stored.summary_json)
    assert stored.outcome == "ok" and summary["rows"] == 900
    assert summary["peak_rss_bytes"] > summary["window_bytes"] > 900 * 4 * 10  # memory recorded
    # `monitor.drift_sample`: each scope's tests run on that many of its rows
    settings.monitor.drift_sample = 100
    sampled = run_cycle(settings, store, registry)["drift"]
    assert sampled["all"]["rows"] == 100 and sampled["all"]["window_rows"] == 900
    assert all(d["rows"] == min(100, d["window_rows"]) for d in sampled.values())


def test_weak_slice_is_significant_and_ranked(tmp_path: Path, model_files) -> None:
    settings, store, registry, version = _setup(tmp_path, model_files)
    # A different teacher: agreement is low everywhere; on c (shifted inputs) it is lower still.
    seed_samples(store, version, n=1200, shift_c=4.0, teacher_seed=1)
    result = run_cycle(settings, store, registry)
    table = result["slices"]
    for w in result["weak_slices"]:
        assert w["agreement_ci"][1] < w["rest_ci_low"] and w["n"] >= 60
    gains = [w["expected_gain"] for w in result["weak_slices"]]
    assert gains == sorted(gains, reverse=True)
    assert set(table) == {"all", "sensor=a", "sensor=b", "sensor=c"}


def test_too_few_rows_is_skipped(tmp_path: Path, model_files) -> None:
    settings, store, registry, version = _setup(tmp_path, model_files)
    seed_samples(store, version, n=20)
    result = run_cycle(settings, store, registry)
    assert result["outcome"] == "skipped" and "min_rows" in result["reason"]


def _cycle(
    agreement: float, weak: list[str] | None = None, drift: float = 0.0, recent: int = 500, new: int = 0
) -> dict:
    return {
        "outcome": "ok",
        "rows": 1000,
        "overall": {"agreement": agreement, "teacher": {"ece": 0.02}},
        "drift": {"all": {"share": drift}},
        "weak_slices": [{"slice": s, "recent_rows": recent, "rows_since_run": new} for s in (weak or [])],
        "teacher_versions": {"big": ["v1"]},
    }


def test_a_cycle_of_a_student_no_longer_active_starts_nothing(tmp_path: Path, model_files) -> None:
    """Right after a promotion, a cycle computed for the previous student is not acted on."""
    settings, store, _, version = _setup(tmp_path, model_files)
    cfg = PolicyConfig(min_agreement=0.9, hysteresis=1, cooldown_s=0)
    stale = policy.decide(store, cfg, {**_cycle(0.5, ["sensor=c"]), "student_version": "earlier"})
    assert stale.action == "ok" and "not acted on" in stale.reason and version in stale.reason
    current = policy.decide(store, cfg, {**_cycle(0.5, ["sensor=c"]), "student_version": version})
    assert current.action == "trigger"


def test_policy_hysteresis_cooldown_budget_and_ceiling(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'p.db'}")
    cfg = PolicyConfig(min_agreement=0.9, hysteresis=2, cooldown_s=100, max_runs_per_day=2)
    assert policy.decide(store, cfg, _cycle(0.95)).action == "ok"
    first = policy.decide(store, cfg, _cycle(0.8, ["sensor=c"]))
    assert first.action == "hold" and "1 of 2" in first.reason
    second = policy.decide(store, cfg, _cycle(0.8, ["sensor=c"]))
    assert second.action == "trigger" and second.numbers["agreement"] == 0.8
    # The trigger ends the streak: the next breach starts counting again.
    assert policy.decide(store, cfg, _cycle(0.8)).action == "hold"
    now = time.time()

    def run(status: str, at: float, verdict: str = "continue", weak: list[str] | None = None) -> None:
        detail = {
            "stop": {"verdict": verdict},
            "trigger_numbers": {
                "teacher_versions": {"big": ["v1"]},
                "weak_slices": [{"slice": s} for s in weak or []],
            },
        }
        store.add_run(
            DistillRun(
                id=f"r{at:.0f}{status}",
                created_at=at,
                updated_at=at,
                status=status,
                detail_json=orjson.dumps(detail).decode(),
            )
        )

    run("running", now)
    d = policy.decide(store, cfg, _cycle(0.8))
    assert d.action == "blocked" and "running" in d.reason
    store.update_run(f"r{now:.0f}running", status="promoted")
    d = policy.decide(store, cfg, _cycle(0.8))
    assert d.action == "blocked" and "cooldown" in d.reason
    cfg.cooldown_s = 0
    run("rejected", now - 10)
    d = policy.decide(store, cfg, _cycle(0.8))
    assert d.action == "blocked" and "budget" in d.reason
    cfg.max_runs_per_day = 10
    run("promoted", time.time(), verdict="ceiling_reached", weak=["sensor=c"])
    d = policy.decide(store, cfg, _cycle(0.8, ["sensor=c"]))
    assert d.action == "blocked" and "ceiling" in d.reason
    # The data changed (another weak slice): the ceiling no longer blocks.
    assert policy.decide(store, cfg, _cycle(0.8, ["sensor=b"])).action == "trigger"
    decisions = store.recent_decisions(50)
    assert all(orjson.loads(d.numbers_json).get("thresholds") or d.action == "ok" for d in decisions)


def _add_run(store: Store, run_id: str, at: float, status: str, detail: dict) -> None:
    store.add_run(
        DistillRun(
            id=run_id, created_at=at, updated_at=at, status=status, detail_json=orjson.dumps(detail).decode()
        )
    )


def test_ceiling_releases_when_new_rows_arrive_a_bounded_number_of_times(tmp_path: Path) -> None:
    """A ceiling verdict never blocks for good because of a data shortfall: new rows of the weak
    slice release it, `policy.ceiling_retries` times in a row; the engine's per-slice verdict counts."""
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    cfg = PolicyConfig(hysteresis=1, cooldown_s=0, max_runs_per_day=100, ceiling_retries=1)
    then = {"teacher_versions": {"big": ["v1"]}, "weak_slices": [{"slice": "sensor=c"}]}
    # The run's overall verdict says ceiling, but its own slice had room left: no block.
    room = {"verdict": "ceiling_reached", "slices": {"sensor=c": {"verdict": "room_left"}}}
    _add_run(store, "r0", time.time() - 30, "rejected", {"stop": room, "trigger_numbers": then})
    assert policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], new=0)).action == "trigger"
    at_ceiling = {"verdict": "ceiling_reached", "slices": {"bin=1,sensor=c": {"verdict": "ceiling_reached"}}}
    _add_run(store, "r1", time.time() - 20, "rejected", {"stop": at_ceiling, "trigger_numbers": then})
    d = policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], new=10))
    assert d.action == "blocked" and "waiting for new rows" in d.reason and "sensor=c 10 of 80" in d.reason
    assert policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], new=80)).action == "trigger"
    _add_run(store, "r2", time.time() - 10, "rejected", {"stop": at_ceiling, "trigger_numbers": then})
    d = policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], new=500))
    assert d.action == "blocked" and "r2, r1" in d.reason and "teacher" in d.reason
    changed = {**then, "teacher_versions": {"big": ["v2"]}}
    assert policy.decide(store, cfg, _cycle(0.8, ["sensor=b"], new=500)).action == "trigger"
    _add_run(store, "r3", time.time(), "rejected", {"stop": at_ceiling, "trigger_numbers": changed})
    assert policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], new=500)).action == "trigger"


def test_a_shortfall_of_weak_rows_waits_then_starts_and_never_counts_as_a_run(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    cfg = PolicyConfig(hysteresis=2, cooldown_s=3600, min_weak_train_rows=50, min_weak_holdout_rows=30)
    assert policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], recent=20)).action == "hold"
    d = policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], recent=20))
    assert d.action == "waiting" and "sensor=c has 20 recent rows" in d.reason and "needs 80" in d.reason
    assert d.numbers["waiting_for_data"] == {"rows": {"sensor=c": 20}, "need": 80}
    # The build of a run that found too few rows (a race with the cycle) holds back nothing.
    _add_run(store, "w1", time.time(), "failed", {"waiting_for_data": {"rows": {"sensor=c": 70}}})
    d = policy.decide(store, cfg, _cycle(0.8, ["sensor=c"], recent=80))
    assert d.action == "trigger"  # the streak went on while waiting: no second hysteresis


def test_monitor_only_policy_records_breaches_but_never_starts_a_run(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = PolicyConfig(min_agreement=0.9, hysteresis=1, cooldown_s=0, max_runs_per_day=0)
    for _ in range(3):
        d = policy.decide(store, cfg, _cycle(0.5, ["sensor=c"]))
        assert d.action == "blocked" and "max_runs_per_day: 0" in d.reason and d.numbers["agreement"] == 0.5
    assert [r.action for r in store.recent_decisions(10)] == ["blocked"] * 3


def test_runs_of_a_dead_replica_are_failed_but_live_ones_kept(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from distill_watchdog.loop.runs import RunManager

    store = Store(f"sqlite:///{tmp_path / 'o.db'}")
    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    manager = RunManager(SimpleNamespace(store=store, settings=settings))  # type: ignore[arg-type]
    old = time.time() - 600
    for run_id, owner, touched in (("dead", "other-replica", old), ("alive", "other-replica", time.time())):
        detail = orjson.dumps({"owner": owner}).decode()
        store.add_run(
            DistillRun(id=run_id, created_at=old, updated_at=touched, status="running", detail_json=detail)
        )
    assert manager.recover_orphans(stale_s=60) == 1
    assert store.get_run("dead").status == "failed" and store.get_run("alive").status == "running"


def _rows_of(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which seeded sample (by position, oldest first) each stored row is."""
    where = {r.tobytes(): i for i, r in enumerate(x)}
    return np.asarray([where[r.astype(np.float32).tobytes()] for r in rows])


def test_job_reads_only_rows_the_active_student_can_take(tmp_path: Path, model_files) -> None:
    """Rows of an earlier student with another width stay stored but never reach a build."""
    import uuid

    from distill_watchdog.loop.build import build_job

    from support import SampleRecord, add_samples

    settings, store, registry, version = _setup(tmp_path, model_files)
    seed_samples(store, version, n=600)
    now = time.time()
    wide = [
        SampleRecord(
            id=uuid.uuid4().hex,
            request_id=uuid.uuid4().hex,
            at=now + i,  # the newest rows in the store
            features=np.zeros(12, np.float32),
            student_probs=np.full(3, 1 / 3, np.float32),
            student_version="earlier",
            slices={"sensor": "c"},
            quarantined=False,
            teachers={"big": ("v1", np.full(3, 1 / 3, np.float32), False)},
        )
        for i in range(200)
    ]
    add_samples(store, wide)
    built = build_job(settings, store, registry, tmp_path / "run", "r1", ["sensor=c"])
    assert built["train_rows"] + built["holdout_rows"] == 600
    with np.load(tmp_path / "run" / "train.npz") as train:
        assert train["x"].shape[1] == 40


def test_job_holds_out_recent_rows_per_slice_weights_weak_rows_and_replays_reference(
    tmp_path: Path, model_files
) -> None:
    import yaml

    from distill_watchdog.loop.build import build_job, launch_argv

    settings, store, registry, version = _setup(tmp_path, model_files, window=300)
    x = seed_samples(store, version, n=600)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=50)
    np.savez(tmp_path / "ref.npz", x=rng.normal(size=(50, 40)).astype(np.float32), teacher_probs=probs)
    settings.monitor.reference = tmp_path / "ref.npz"
    built = build_job(settings, store, registry, tmp_path / "run", "r1", ["sensor=c"])
    assert built["train_rows"] + built["holdout_rows"] == 600 and built["replayed_reference_rows"] == 50
    job = yaml.safe_load((tmp_path / "run" / "job.yaml").read_text())
    assert job["calibrate"]["exclude_slices"] == ["reference"]  # trained on, never validated on
    # The whole schedule, the last epoch: the engine's hold-out cannot judge a weak slice's gain.
    assert job["train"]["patience"] == 0 and job["train"]["keep"] == "last"
    with np.load(tmp_path / "run" / "train.npz") as train, np.load(tmp_path / "run" / "holdout.npz") as hold:
        assert len(train["x"]) == built["train_rows"] + 50 and (train["slice"] == "reference").sum() == 50
        real = train["slice"] != "reference"
        trained, held = _rows_of(x, train["x"][real]), _rows_of(x, hold["x"])
        assert not set(trained) & set(held) and len(held) == built["holdout_rows"]
        # Held out at random from the recent window (the newest 300), not the newest rows:
        # every sensor is on both sides, early and late in the window.
        assert held.min() >= 300 and held.min() < 360 and held.max() > 540
        assert set(hold["slice"]) == {"sensor=a", "sensor=b", "sensor=c"}
        c_hold = int((hold["slice"] == "sensor=c").sum())
        c_train_recent = int(((train["slice"][real] == "sensor=c") & (trained >= 300)).sum())
        assert c_hold >= 30 and c_train_recent >= 50 and c_hold + c_train_recent == 100
        assert built["weak_counts"] == {"sensor=c": {"train": c_train_recent, "holdout": c_hold}}
        heavy = train["weight"][real] > 1
        assert heavy.sum() == built["weak_rows"] == c_train_recent
        assert set(train["slice"][real][heavy]) == {"sensor=c"} and trained[heavy].min() >= 300
    assert built["weak_since"] is None and built["warm_start"] is False  # the card names no architecture
    job = yaml.safe_load((tmp_path / "run" / "job.yaml").read_text())
    assert "init_from" not in job["student"]
    assert job["data"] == {"train": "train.npz", "eval": "holdout.npz"}
    assert job["curation"]["match_production"] == "production.npz" and job["parent_version"] == version
    argv = launch_argv(settings, tmp_path / "run" / "job.yaml", tmp_path / "out", "r1")
    assert argv[1:3] == ["-m", "distill_engine"]
    settings.distill.launcher = "torchrun"
    assert "torch.distributed.run" in launch_argv(settings, tmp_path / "j", tmp_path / "o", "r1")
    settings.distill.launcher, settings.distill.command = "command", "submit --job {job} --id {run_id}"
    assert launch_argv(settings, Path("/j.yaml"), Path("/o"), "r1") == [
        "submit",
        "--job",
        "/j.yaml",
        "--id",
        "r1",
    ]


def test_a_weak_slice_short_of_rows_waits_for_data(tmp_path: Path, model_files) -> None:
    from distill_watchdog.loop.build import build_job
    from distill_watchdog.loop.holdout import WaitingForData

    settings, store, registry, version = _setup(tmp_path, model_files, window=150)
    seed_samples(store, version, n=600)
    with pytest.raises(WaitingForData) as exc:  # 50 recent rows of sensor c; 50 + 30 needed
        build_job(settings, store, registry, tmp_path / "run", "r1", ["sensor=c"])
    assert exc.value.counts == {"sensor=c": 50} and exc.value.need == 80
    settings.policy.min_weak_train_rows, settings.policy.min_weak_holdout_rows = 30, 20
    built = build_job(settings, store, registry, tmp_path / "run", "r1", ["sensor=c"])
    counts = built["weak_counts"]["sensor=c"]
    assert counts["holdout"] >= 20 and counts["train"] >= 30


def test_weak_rows_are_weighted_since_the_slice_was_last_healthy(
    tmp_path: Path, model_files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change is noticed cycles late: every row of a weak slice since the newest decision that
    did not find it weak counts."""
    from distill_watchdog.loop import build

    settings, store, registry, version = _setup(tmp_path, model_files, window=60)
    x = seed_samples(store, version, n=600)
    assert build.healthy_since(store, ["sensor=c"]) == {"sensor=c": None}
    store.add_decision(None, "ok", "within thresholds", {"breached": False, "weak_slices": []})
    weak_c = {"breached": True, "weak_slices": [{"slice": "sensor=c"}]}
    store.add_decision(None, "hold", "weak slices: sensor=c", weak_c)
    store.add_decision(None, "hold", "agreement", {"breached": True})  # no judgement of slices
    since = build.healthy_since(store, ["sensor=c", "sensor=a"])
    assert abs(since["sensor=c"] - time.time()) < 60 and since["sensor=a"] > since["sensor=c"]
    # A cycle in which sensor c had too few rows to be judged (just after a promotion, say) does
    # not make it healthy; one that judged it and found it fine does.
    unjudged = {"breached": False, "weak_slices": [], "judged_slices": ["sensor=a"]}
    store.add_decision(None, "ok", "within thresholds", unjudged)
    after = build.healthy_since(store, ["sensor=c", "sensor=a"])
    assert after["sensor=c"] == since["sensor=c"] and after["sensor=a"] > since["sensor=a"]
    at = [r["at"] for r in recent_samples(store, limit=600)]
    monkeypatch.setattr(build, "healthy_since", lambda _store, labels: dict.fromkeys(labels, sorted(at)[299]))
    built = build.build_job(settings, store, registry, tmp_path / "run", "r1", ["sensor=c"])
    with np.load(tmp_path / "run" / "train.npz") as train:
        heavy = train["weight"] > 1
        assert set(train["slice"][heavy]) == {"sensor=c"}
        # the 100 sensor-c rows of the newest 300 (window alone: 20), split between the sides
        assert heavy.sum() == built["weak_rows"] == built["weak_counts"]["sensor=c"]["train"]
        assert built["weak_rows"] + built["weak_counts"]["sensor=c"]["holdout"] == 100
        assert _rows_of(x, train["x"][heavy]).min() >= 300
    # The newest block of its rows that found it weak began earlier (row 150): its rows from there.
    built = build.build_job(
        settings, store, registry, tmp_path / "run2", "r2", ["sensor=c"], {"sensor=c": sorted(at)[150]}
    )
    assert built["weak_rows"] + built["weak_counts"]["sensor=c"]["holdout"] == 150


def test_cycle_results_become_gauges_with_bounded_slices_and_alerts(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from distill_watchdog import metrics
    from distill_watchdog.alerts import Alerter
    from distill_watchdog.loop.scheduler import Scheduler

    settings = load_settings(None, data_dir=str(tmp_path), monitor={"top_slices": 2})

    def block(agreement: float, n: int) -> dict:
        return {"n": n, "agreement": agreement, "kl": 0.1, "estimated_accuracy": 0.8, "teacher": {"ece": 0.3}}

    slices = {"all": block(0.8, 1000), "s=a": block(0.9, 500), "s=b": block(0.8, 300)}
    slices.update({"s=c": block(0.5, 100), "s=d": block(0.7, 100)})
    drift = {"all": {"share": 0.9}, "s=a": {"share": 0.1}, "s=d": {"share": 0.5}}
    result = {"slices": slices, "drift": drift, "weak_slices": [{"slice": "s=c"}], "overall": slices["all"]}

    async def scenario() -> Alerter:
        alerter = Alerter(settings.alerts)  # not started: fire/resolve only touch memory and the queue
        scheduler = Scheduler()
        scheduler.daemon = SimpleNamespace(settings=settings, alerts=alerter)  # type: ignore[assignment]
        scheduler._export(result)
        scheduler._alerts(result)
        assert {a.labels["alertname"] for a in alerter.active.values()} == {
            "WatchdogDrift",
            "WatchdogCalibration",
            "WatchdogWeakSlices",
        }
        calm = {**result, "weak_slices": [], "drift": {"all": {"share": 0.0}}}
        calm["overall"] = {"teacher": {"ece": 0.01}}
        scheduler._alerts(calm)
        return alerter

    alerter = asyncio.run(scenario())
    # Resolved, each ending once it has lived alerts.min_notice_s (its notice reaches a receiver).
    assert all(a.ends_at == a.starts_at + alerter.notice_s for a in alerter.active.values())
    value = metrics.REGISTRY.get_sample_value
    assert value("watchdog_agreement", {"slice": "s=a"}) == 0.9
    assert value("watchdog_agreement", {"slice": "other"}) == 0.6  # (0.5*100 + 0.7*100) / 200
    assert value("watchdog_agreement", {"slice": "s=c"}) is None  # beyond top-K: only in `other`
    assert value("watchdog_drift_share", {"scope": "all"}) == 0.9
    assert value("watchdog_drift_share", {"scope": "s=d"}) is None
    assert value("watchdog_ece", {"slice": "all", "against": "teacher"}) == 0.3
    assert value("watchdog_weak_slices", {}) == 1


def test_retention_deletes_old_samples_cycles_and_decisions(tmp_path: Path, model_files) -> None:
    from distill_watchdog.store.tables import MonitorCycle

    settings, store, registry, version = _setup(tmp_path, model_files)
    seed_samples(store, version, n=300)  # times: now-300 .. now-1
    store.add_cycle(MonitorCycle(at=time.time() - 1000))
    store.add_decision(None, "ok", "old", {})
    deleted = store.delete_before(time.time() - 100, batch=7)  # many small transactions
    assert 195 <= deleted["samples"] <= 205 and deleted["teacher_outputs"] == deleted["samples"]
    assert deleted["cycles"] == 1 and store.count_samples() == 300 - deleted["samples"]


def test_a_window_wide_breach_gets_one_run_until_something_changes(tmp_path: Path) -> None:
    """A student below min_agreement everywhere: one run answers it; the budget is kept for a
    slice that breaks later, a drift change or a new teacher version."""
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    cfg = PolicyConfig(min_agreement=0.9, hysteresis=1, cooldown_s=0, max_runs_per_day=10)
    first = policy.decide(store, cfg, _cycle(0.85))
    assert first.action == "trigger"
    _add_run(store, "r1", time.time(), "promoted", {"trigger_numbers": first.numbers})
    again = policy.decide(store, cfg, _cycle(0.87))
    assert again.action == "blocked" and "window-wide" in again.reason and "r1" in again.reason
    assert policy.decide(store, cfg, _cycle(0.87, ["sensor=c"])).action == "trigger"  # a weak slice
    assert policy.decide(store, cfg, _cycle(0.87, drift=0.6)).action == "trigger"  # the drift moved
    _add_run(store, "r0", time.time() - 5, "failed", {"trigger_numbers": first.numbers})
    store.update_run("r1", status="failed")  # a failed run answered nothing
    assert policy.decide(store, cfg, _cycle(0.87)).action == "trigger"


def test_runs_with_no_weak_slice_use_at_most_half_the_daily_budget(tmp_path: Path) -> None:
    """Each promotion on clean traffic can release the next window-wide run (a new student, a new
    reference and drift share); half the budget stays for a slice that breaks later."""
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    cfg = PolicyConfig(min_agreement=0.9, hysteresis=1, cooldown_s=0, max_runs_per_day=4)
    for i, drift in enumerate((0.1, 0.3)):
        decision = policy.decide(store, cfg, _cycle(0.85, drift=drift))
        assert decision.action == "trigger"
        _add_run(store, f"w{i}", time.time(), "promoted", {"trigger_numbers": decision.numbers})
    third = policy.decide(store, cfg, _cycle(0.86, drift=0.6))  # released by the drift, but
    assert third.action == "blocked" and "used 2 of the daily budget of 4" in third.reason
    weak = policy.decide(store, cfg, _cycle(0.86, ["sensor=c"]))
    assert weak.action == "trigger"  # what the rest is kept for
    old = time.time() - 90_000  # yesterday's runs do not count
    store.update_run("w0", created_at=old)
    assert policy.decide(store, cfg, _cycle(0.86, drift=0.9)).action == "trigger"


def test_a_weak_slice_whose_rows_left_the_window_is_carried_while_a_run_can_read_them(
    tmp_path: Path, model_files
) -> None:
    """A slow slice that sent its changed rows and went quiet stays weak for the policy (so a run
    rejected on it can be followed by another), while the same student serves, the slice has too
    few rows in the window to be judged, and its changed rows are within a run's reach; its
    changed rows are counted in the store, where a run reads them."""
    settings, store, registry, version = _setup(tmp_path, model_files, window=900)
    seed_samples(store, version, n=100, sensors=("d",), ago=5_000)  # d's rows, then it went quiet
    seed_samples(store, version, n=900, teacher_seed=0)  # the window: a, b, c, none weak
    cfg = PolicyConfig(hysteresis=1, cooldown_s=0)

    def weak(label: str, n: int) -> dict:
        return {"slice": label, "scope": "newest", "n": n, "from": time.time() - 10_000, "recent_rows": n}

    quiet, judged = weak("sensor=d", 70), weak("sensor=c", 300)  # d: 70 when its rows began to leave
    policy.decide(store, cfg, {**_cycle(0.95), "weak_slices": [quiet, judged], "student_version": version})
    result = run_cycle(settings, store, registry)
    carried = [w for w in result["weak_slices"] if w.get("carried")]
    assert [w["slice"] for w in carried] == ["sensor=d"]  # c has its rows in the window: judged healthy
    assert carried[0]["recent_rows"] == 100 and carried[0]["rows_since_run"] == 100  # all d's rows
    decision = policy.decide(store, cfg, result)
    assert decision.action == "trigger" and "sensor=d (its rows left the window)" in decision.reason
    # Carried again from that decision, until a run could no longer read the changed rows ...
    assert [w["slice"] for w in run_cycle(settings, store, registry)["weak_slices"]] == ["sensor=d"]
    settings.policy.max_train_rows = 900
    assert run_cycle(settings, store, registry)["weak_slices"] == []
    # ... or another student serves.
    settings.policy.max_train_rows = 50_000
    store.add_decision(None, "trigger", "weak slices", {"weak_slices": [quiet], "student_version": "earlier"})
    assert run_cycle(settings, store, registry)["weak_slices"] == []


def test_changed_rows_that_began_before_the_window_are_counted_in_the_store(
    tmp_path: Path, model_files
) -> None:
    """As a slow slice's changed rows leave the window, the policy would count fewer of them
    than a run reads, and wait for data it has."""
    from distill_watchdog.loop.monitor.cycle import _count_new_rows
    from distill_watchdog.loop.monitor.window import Window

    _, store, _, version = _setup(tmp_path, model_files)
    seed_samples(store, version, n=100, sensors=("d",), ago=5_000)
    now = time.time()
    probs = np.full((3, 2), 0.5)
    w = Window(
        x=np.zeros((3, 2), np.float32), student=probs, teacher=probs, labels=np.full(3, -1),
        slice_codes=np.array([0, 1, 0]), slice_kinds=[["sensor=d"], ["sensor=a"]],
        at=np.array([now - 20, now - 10, now]), student_versions=np.full(3, version),
    )  # fmt: skip
    slices = {"sensor=d": w.mask("sensor=d")}
    weak = [{"slice": "sensor=d", "from": now - 10_000}, {"slice": "sensor=d", "from": now - 15}]
    _count_new_rows(store, w, slices, weak, {})
    assert [e["recent_rows"] for e in weak] == [100, 1]  # before the window: the store; inside: the window
