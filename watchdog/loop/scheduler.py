"""The scheduler component: leader election, then monitor cycles, retention and teacher re-evaluation.

Every replica runs one; only the holder of the leader lock (PostgreSQL advisory lock, or a
file lock beside SQLite) does the work. If the leader dies its database session ends, the
lock is freed, and another replica takes it within `monitor.leader_poll_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from distill_watchdog import metrics, procs
from distill_watchdog.loop import policy
from distill_watchdog.loop.artifacts import prune_runs
from distill_watchdog.loop.monitor import process as monitor_process
from distill_watchdog.loop.monitor.stats import top_slices

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon
    from distill_watchdog.loop.runs import RunManager
    from distill_watchdog.store import LeaderLock

log = logging.getLogger(__name__)
# This scheduler's own APScheduler logger: a skipped overlapping run is expected (max_instances=1),
# not worth a warning each time; errors still show. Other APScheduler users keep their logging.
_QUIET = logging.getLogger(f"{__name__}.apscheduler")


def _weak_notes(w: dict[str, Any], versions: str) -> dict[str, str]:
    def num(key: str) -> str:
        value = w.get(key)
        return "" if value is None else f"{value:.4g}"

    return {
        "summary": (
            f"slice {w['slice']}: agreement {num('agreement')} against {num('rest_agreement')} "
            f"for the rest, {w.get('n', '?')} rows"
        )[:500],
        "agreement": num("agreement"),
        "rest_agreement": num("rest_agreement"),
        "rows": str(w.get("n", "")),
        "expected_gain": num("expected_gain"),
        "teacher_versions": versions,
    }


def _ceiling_run(store: Any) -> str | None:
    """The newest run whose stop verdict is `ceiling_reached` (the one that blocks the policy)."""
    for run in store.list_runs(10):
        if (orjson.loads(run.detail_json).get("stop") or {}).get("verdict") == "ceiling_reached":
            return run.id
    return None


class Scheduler:
    """The leader's timers: monitor cycles, retention, teacher re-evaluation; runs through the
    daemon's RunManager, which it stops with itself."""

    slot = "scheduler"  # the Daemon field create_app fills with it

    def __init__(self) -> None:
        self.daemon: Daemon | None = None
        self.lock: LeaderLock | None = None
        self.is_leader = False
        self.worker: procs.Worker | None = None  # the monitor's child
        self.runs: RunManager | None = None
        self.last_cycle: dict[str, Any] | None = None
        self.last_decision: policy.Decision | None = None
        self._sched: AsyncIOScheduler | None = None

    async def start(self, daemon: Daemon) -> None:
        if daemon.runs is None:
            raise RuntimeError("scheduler: the daemon has no run manager (build_daemon makes it)")
        self.daemon = daemon
        self.runs = daemon.runs
        settings = daemon.settings
        self.worker = procs.Worker(
            "monitor",
            monitor_process.main,
            (settings.child_json(),),
            "idle",
            daemon.background_cpus,
            metrics.scheduler_errors_total.labels(task="monitor"),
        )
        self.lock = daemon.store.leader_lock()
        metrics.leader.set(0)
        cfg = settings.monitor
        _QUIET.setLevel(logging.ERROR)
        sched = AsyncIOScheduler(logger=_QUIET)
        now = datetime.now()
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        sched.add_job(self._poll_leader, "interval", seconds=cfg.leader_poll_s, next_run_time=now, **common)
        sched.add_job(self.monitor_cycle, "interval", seconds=cfg.interval_s, **common)
        sched.add_job(self._retention, "interval", seconds=cfg.retention_interval_s, **common)
        sched.add_job(self._reevaluate, "interval", seconds=cfg.teacher_reeval_interval_s, **common)
        sched.start()
        self._sched = sched

    async def stop(self) -> None:
        if self._sched is not None:
            self._sched.shutdown(wait=False)
        if self.runs is not None:
            await self.runs.stop()
        if self.worker is not None:
            await self.worker.close()
        if self.lock is not None:
            await asyncio.to_thread(self.lock.release)
        self.is_leader = False
        metrics.leader.set(0)

    # --- leadership ----------------------------------------------------------------------------

    async def _poll_leader(self) -> None:
        assert self.lock is not None and self.runs is not None
        try:
            held = await asyncio.to_thread(self.lock.poll)
        except asyncio.CancelledError:  # the daemon is stopping
            return
        except Exception:
            metrics.scheduler_errors_total.labels(task="leader").inc()
            log.exception("scheduler: leader poll failed")
            held = False
        if held and not self.is_leader:
            log.info("scheduler: this replica is now the leader")
            assert self.daemon is not None
            with contextlib.suppress(Exception):
                stale = 3 * self.daemon.settings.monitor.leader_poll_s + 30
                n = await asyncio.to_thread(self.runs.recover_orphans, stale)
                if n:
                    log.warning("scheduler: marked %d orphaned runs failed", n)
        elif not held and self.is_leader:
            log.warning("scheduler: lost the leader lock")
        self.is_leader = held
        metrics.leader.set(1 if held else 0)
        if self.runs.tasks:
            try:
                await asyncio.to_thread(self.runs.heartbeat)
            except Exception:
                metrics.scheduler_errors_total.labels(task="run").inc()

    # --- monitor cycle -------------------------------------------------------------------------

    async def monitor_cycle(self) -> dict[str, Any] | None:
        """One cycle in the child; then gauges, alerts, the policy and maybe a run."""
        if not self.is_leader:
            return None
        assert self.daemon is not None and self.worker is not None and self.runs is not None
        settings = self.daemon.settings
        store = self.daemon.store
        if await asyncio.to_thread(store.count_samples, False) < settings.monitor.min_rows:
            metrics.monitor_cycles_total.labels(outcome="skipped").inc()
            return None
        began = time.perf_counter()
        try:
            if self.worker.child is None:  # the child starts with the first cycle that has data to look at
                await self.worker.warm(settings.monitor.cycle_timeout_s)
                began = time.perf_counter()
            result = await self.worker.call("cycle", settings.monitor.cycle_timeout_s)
        except asyncio.CancelledError:  # the daemon is stopping
            return None
        except TimeoutError:  # the worker killed the child and logged it
            metrics.monitor_cycles_total.labels(outcome="timeout").inc()
            return None
        except procs.ChildFailed as exc:
            metrics.monitor_cycles_total.labels(outcome="failed").inc()
            log.error("monitor: cycle failed: %s", exc)
            return None
        metrics.monitor_cycle_seconds.set(time.perf_counter() - began)
        metrics.monitor_cycles_total.labels(outcome=result.get("outcome", "ok")).inc()
        self.last_cycle = result
        if result.get("outcome") != "ok":
            return result
        self._export(result)
        self._alerts(result)
        try:
            decision = await asyncio.to_thread(policy.decide, store, settings.policy, result)
        except Exception:
            metrics.scheduler_errors_total.labels(task="monitor").inc()
            log.exception("policy: decision failed")
            return result
        self.last_decision = decision
        metrics.policy_decisions_total.labels(action=decision.action).inc()
        log.info("policy: %s (%s)", decision.action, decision.reason)
        if decision.action == "trigger":
            await self.runs.trigger("policy", decision.reason, decision.numbers, result.get("drift"))
        await self._ceiling_alert(decision)
        return result

    def _export(self, result: dict[str, Any]) -> None:
        """Gauges for `all`, the top-K slices and `other` (row-weighted mean of the rest)."""
        table: dict[str, dict[str, Any]] = result.get("slices") or {}
        keep = top_slices(table, self.daemon.settings.monitor.top_slices) if self.daemon else []
        rest = [s for s in table if s != "all" and s not in keep]
        for gauge in (metrics.agreement, metrics.ece, metrics.kl_divergence, metrics.estimated_accuracy):
            metrics.retire(gauge)
        metrics.retire(metrics.drift_share)

        def values(stats: dict[str, Any]) -> dict[str, float | None]:
            return {
                "agreement": stats.get("agreement"),
                "kl": stats.get("kl"),
                "est": stats.get("estimated_accuracy"),
                "ece_teacher": (stats.get("teacher") or {}).get("ece"),
                "ece_labels": (stats.get("labels") or {}).get("ece"),
            }

        rows: dict[str, dict[str, float | None]] = {s: values(table[s]) for s in ["all", *keep] if s in table}
        if rest:
            merged: dict[str, float | None] = {}
            for key in ("agreement", "kl", "est", "ece_teacher", "ece_labels"):
                pairs = [(values(table[s])[key], table[s]["n"]) for s in rest]
                pairs = [(v, n) for v, n in pairs if v is not None]
                total = sum(n for _, n in pairs)
                merged[key] = sum(v * n for v, n in pairs) / total if total else None
            rows["other"] = merged
        for label, v in rows.items():
            if v["agreement"] is not None:
                metrics.agreement.labels(slice=label).set(v["agreement"])
            if v["kl"] is not None:
                metrics.kl_divergence.labels(slice=label).set(v["kl"])
            if v["est"] is not None:
                metrics.estimated_accuracy.labels(slice=label).set(v["est"])
            if v["ece_teacher"] is not None:
                metrics.ece.labels(slice=label, against="teacher").set(v["ece_teacher"])
            if v["ece_labels"] is not None:
                metrics.ece.labels(slice=label, against="labels").set(v["ece_labels"])
        drift = result.get("drift") or {}
        for scope, d in drift.items():
            if scope == "all" or scope in keep:
                metrics.drift_share.labels(scope=scope).set(d["share"])
        metrics.weak_slices.set(len(result.get("weak_slices", [])))

    def _alerts(self, result: dict[str, Any]) -> None:
        """Quality alerts of one cycle; `teacher` names what the student was compared with, so a
        teacher's version change can inhibit them in Alertmanager."""
        assert self.daemon is not None
        alerts = self.daemon.alerts
        if alerts is None:
            return
        settings = self.daemon.settings
        cfg = settings.policy
        teachers = ",".join(sorted(t.name for t in settings.teachers))
        common = {"severity": "warning", **({"teacher": teachers} if teachers else {})}
        versions = orjson.dumps(result.get("teacher_versions") or {}).decode()
        overall = result.get("overall") or {}
        share = ((result.get("drift") or {}).get("all") or {}).get("share")
        ece = (overall.get("teacher") or {}).get("ece")
        checks = [
            ("WatchdogDrift", share, cfg.max_drift_share, share is not None and share > cfg.max_drift_share,
             "drift share {:.2f} > {:g}"),
            ("WatchdogCalibration", ece, cfg.max_ece, ece is not None and ece > cfg.max_ece,
             "ECE against the teacher {:.3f} > {:g}"),
        ]  # fmt: skip
        for name, value, limit, breached, text in checks:
            notes = {
                "summary": text.format(value or 0.0, limit),
                "value": f"{value}",
                "threshold": f"{limit:g}",
            }
            alerts.reconcile(name, [(common, {**notes, "teacher_versions": versions})] if breached else [])
        weak = result.get("weak_slices", [])[: settings.monitor.top_slices]
        alerts.reconcile(
            "WatchdogWeakSlices",
            [({**common, "slice": w["slice"][:200]}, _weak_notes(w, versions)) for w in weak],
        )

    async def _ceiling_alert(self, decision: policy.Decision) -> None:
        """Fires while the policy is blocked by a run's ceiling verdict (labelled with that run)."""
        alerts = self.daemon.alerts if self.daemon is not None else None
        if alerts is None:
            return
        run = None
        if decision.numbers.get("ceiling"):
            run = await asyncio.to_thread(_ceiling_run, self.daemon.store)
        firing = [({"severity": "warning", "run": run}, {"summary": decision.reason[:500]})] if run else []
        alerts.reconcile("WatchdogCeilingReached", firing)

    # --- housekeeping ----------------------------------------------------------------------------

    async def _retention(self) -> None:
        if not self.is_leader or self.daemon is None:
            return
        settings = self.daemon.settings
        now = time.time()
        run_cutoff = now - (settings.monitor.run_retention_s or settings.monitor.retention_s)
        try:
            deleted = await asyncio.to_thread(
                self.daemon.store.delete_before, now - settings.monitor.retention_s
            )
            runs_dir = settings.data_dir / "runs"
            deleted |= await asyncio.to_thread(prune_runs, self.daemon.store, runs_dir, run_cutoff)
            log.info("retention: deleted %s", deleted)
        except Exception:
            metrics.scheduler_errors_total.labels(task="retention").inc()
            log.exception("retention: failed")

    async def _reevaluate(self) -> None:
        """Retries re-evaluation of teacher versions still in quarantine (e.g. after an error)."""
        service = self.daemon.teachers if self.daemon is not None else None
        if not self.is_leader or service is None:
            return
        for name, state in list(service.states.items()):
            if state.state == "quarantine" and state.candidate and name in service.loaded:
                try:
                    await service.reevaluate(name, state.candidate)
                except Exception:
                    metrics.scheduler_errors_total.labels(task="reeval").inc()
                    log.exception("scheduler: re-evaluation of %s failed", name)
