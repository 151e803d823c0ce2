"""Redistillation runs, end to end: build the job, launch it, gate, promote or wait for review.

A run is a row in `distill_runs` and a folder `data_dir/runs/<id>/`. Training runs in a child
process (launcher `process`, `torchrun` or a `command` template) with a timeout; gates and
the report are computed in a second child. A crash, a timeout or a bad result marks the run
failed, counts it and alerts; serving never waits on any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from distill_watchdog import metrics, procs
from distill_watchdog.background import Priority
from distill_watchdog.loop.artifacts import compress_drift_page
from distill_watchdog.loop.build import launch_argv
from distill_watchdog.loop.monitor.reference import write_reference
from distill_watchdog.store.tables import DistillRun

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon

log = logging.getLogger(__name__)

FINISH_TIMEOUT_S = 900.0


class RunError(Exception):
    pass


def _tail(path: Path, chars: int = 600) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-6:])[-chars:]


class RunManager:
    """Starts, follows and ends the runs of one daemon (made by `app.build_daemon` with the
    scheduler, so the admin API and the scheduler share it whatever their start order)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.settings = daemon.settings
        # The steps' `--settings`, private to this user (procs.write_settings).
        self.settings_file = procs.write_settings(
            self.settings, self.settings.data_dir / "run" / f"settings-{os.getpid()}.json"
        )
        # Marks this manager's runs: another replica's stale runs are orphans (recover_orphans).
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.tasks: dict[str, asyncio.Task[None]] = {}

    # --- helpers ---------------------------------------------------------------------------------

    async def _db(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    def _alert(
        self, name: str, labels: dict[str, str], notes: dict[str, str], ttl_s: float | None = 3600
    ) -> None:
        alerts = self.daemon.alerts
        if alerts is not None:
            alerts.fire(name, {"severity": "warning", **labels}, notes, ttl_s=ttl_s)

    def report_url(self, run_id: str) -> str:
        return f"/ui/runs/{run_id}"

    async def _render(self, run_id: str) -> None:
        from distill_watchdog.loop.reports.render import render_run

        try:
            await self._db(render_run, self.daemon.store, run_id)
        except Exception:  # the run's state is stored; only its HTML page is missing
            metrics.scheduler_errors_total.labels(task="run").inc()
            log.exception("runs: cannot render the report of run %s", run_id)

    # --- trigger -----------------------------------------------------------------------------------

    async def trigger(
        self, trigger: str, reason: str, numbers: dict[str, Any], drift: Any = None, actor: str = "policy"
    ) -> DistillRun:
        run_id = uuid.uuid4().hex[:12]
        run_dir = (self.settings.data_dir / "runs" / run_id).resolve()
        now = time.time()
        row = DistillRun(
            id=run_id,
            created_at=now,
            updated_at=now,
            status="running",
            trigger=trigger,
            parent_version=self.daemon.models.current.version if self.daemon.models.current else "",
            run_dir=str(run_dir),
            detail_json=orjson.dumps(
                {
                    "reason": reason,
                    "actor": actor,
                    "owner": self.owner,
                    "trigger_numbers": numbers,
                    "trigger_drift": drift,
                },
                option=orjson.OPT_SERIALIZE_NUMPY,
                default=str,
            ).decode(),
        )
        await self._db(self.daemon.store.add_run, row)
        await self._db(self.daemon.store.audit, actor, "run.start", run_id, reason=reason)
        log.info("runs: started run %s (%s): %s", run_id, trigger, reason)
        self._alert(
            "WatchdogRunStarted",
            {"run": run_id, "severity": "info"},
            {
                "summary": f"redistillation {run_id} started: {reason}"[:500],
                "report": self.report_url(run_id),
            },
        )
        self.tasks[run_id] = asyncio.get_running_loop().create_task(self._execute(run_id, run_dir))
        return row

    async def _execute(self, run_id: str, run_dir: Path) -> None:
        store = self.daemon.store
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            argv = [
                sys.executable,
                "-m",
                "distill_watchdog.loop.build",
                "--settings",
                str(self.settings_file),
                "--run",
                run_id,
            ]
            try:
                await self._spawn(argv, run_dir / "build.log", FINISH_TIMEOUT_S, "building the job", "idle")
            except RunError:
                if (run_dir / "waiting.json").exists():
                    await self._wait_for_data(run_id, run_dir)
                    return
                raise
            built = orjson.loads((run_dir / "build.json").read_bytes())
            await self._db(store.update_run, run_id, detail={"build": built})
            await self._train(run_id, run_dir)
            await self._widen(run_id, run_dir)
            await self._finish(run_id, run_dir)
            await self._db(compress_drift_page, run_dir)
            await self._decide(run_id, run_dir)
        except asyncio.CancelledError:
            await asyncio.shield(self._fail(run_id, "the daemon stopped during the run"))
            raise
        except RunError as exc:
            await self._fail(run_id, str(exc))
        except Exception as exc:
            log.exception("runs: run %s failed unexpectedly", run_id)
            await self._fail(run_id, f"{type(exc).__name__}: {exc}")
        finally:
            self.tasks.pop(run_id, None)

    async def _spawn(
        self, argv: list[str], log_path: Path, timeout: float, what: str, priority: Priority
    ) -> None:
        """Runs one step of the run (procs.run_step, on the background CPUs at `priority`); a step
        that cannot start, times out or exits non-zero raises RunError."""
        try:
            code = await procs.run_step(argv, log_path, timeout, priority, self.daemon.background_cpus)
        except TimeoutError:  # before OSError, its base class
            raise RunError(f"{what}: timed out after {timeout:g} s") from None
        except OSError as exc:
            raise RunError(f"{what}: cannot start {argv[0]!r} ({exc.strerror})") from None
        if code != 0:
            tail = _tail(log_path)
            raise RunError(f"{what}: exit code {code}" + (f": {tail}" if tail else ""))

    async def _train(self, run_id: str, run_dir: Path, job: str = "job.yaml", out_name: str = "out") -> None:
        out = run_dir / out_name
        argv = launch_argv(self.settings, run_dir / job, out, run_id)
        if out_name == "out":
            await self._db(self.daemon.store.update_run, run_id, detail={"argv": argv})
        log_name = "train.log" if out_name == "out" else f"train-{out_name}.log"
        await self._spawn(argv, run_dir / log_name, self.settings.distill.timeout_s, "training", "reduced")
        for name in ("student.onnx", "card.json", "result.json"):
            if not (out / name).exists():
                raise RunError(f"training: finished without writing {name}")

    async def _widen(self, run_id: str, run_dir: Path) -> None:
        """A capacity-limited candidate, or one that lost on a slice: train the wider variants too
        (`widen.py`). A variant that fails is recorded and left out; the first candidate stands."""
        if self.settings.policy.wider_candidates == 0:
            return
        argv = [sys.executable, "-m", "distill_watchdog.loop.widen", "--settings", str(self.settings_file)]
        await self._spawn(
            [*argv, "--run", run_id], run_dir / "widen.log", FINISH_TIMEOUT_S, "widening", "idle"
        )
        planned = orjson.loads((run_dir / "widen.json").read_bytes())
        for variant in planned["variants"]:
            try:
                await self._train(run_id, run_dir, variant["job"], variant["out"])
            except RunError as exc:
                variant["error"] = str(exc)[:500]
        (run_dir / "widen.json").write_bytes(orjson.dumps(planned))
        await self._db(self.daemon.store.update_run, run_id, detail={"widen": planned})

    async def _finish(self, run_id: str, run_dir: Path) -> None:
        argv = [
            sys.executable,
            "-m",
            "distill_watchdog.loop.finish",
            "--settings",
            str(self.settings_file),
            "--run",
            run_id,
        ]
        await self._spawn(argv, run_dir / "finish.log", FINISH_TIMEOUT_S, "gates", "reduced")

    async def _decide(self, run_id: str, run_dir: Path) -> None:
        store, registry = self.daemon.store, self.daemon.registry
        report = orjson.loads((run_dir / "report.json").read_bytes())
        chosen = run_dir / report.get("chosen", "out")
        try:
            info = await self._db(
                registry.register_files, chosen / "student.onnx", chosen / "card.json", "policy"
            )
        except Exception as exc:
            raise RunError(f"registry refused the candidate: {exc}") from None
        verdict = (report.get("stop") or {}).get("verdict")
        gates = report["gates"]
        detail = {
            "stop": report.get("stop"),
            "gates_passed": gates["passed"],
            "failed_gates": gates["failed"],
            "candidates": report.get("candidates", []),
            "chosen": report.get("chosen", "out"),
        }
        # One alert per state change of a run: the stop verdict rides on it (the policy's block by
        # the ceiling rule is its own alert, from the scheduler, while it blocks).
        stop = {"stop_verdict": str(verdict)} if verdict else {}
        if verdict == "ceiling_reached":
            metrics.distill_runs_total.labels(outcome="ceiling").inc()
            stop["stop_note"] = "the stop rule says further redistillation on this data will not pay"
        if not gates["passed"]:
            await self._db(
                store.update_run, run_id, status="rejected", candidate_version=info.version, detail=detail
            )
            metrics.distill_runs_total.labels(outcome="rejected").inc()
            why = "; ".join(f"{g['gate']} {g.get('slice', '')}".strip() for g in gates["failed"][:5])
            self._alert(
                "WatchdogRunFinished",
                {"run": run_id, "outcome": "rejected", "version": info.version},
                {
                    "summary": f"run {run_id}: candidate rejected by gates ({why})",
                    "report": self.report_url(run_id),
                    **stop,
                },
            )
            await self._render(run_id)
            return
        await self._db(
            store.update_run, run_id, status="pending", candidate_version=info.version, detail=detail
        )
        if self.settings.policy.auto_promote:
            await self.promote(run_id, mode="auto", actor="policy", notes=stop)
            return
        metrics.distill_runs_total.labels(outcome="pending").inc()
        self._alert(
            "WatchdogRunFinished",
            {"run": run_id, "outcome": "pending", "version": info.version},
            {
                "summary": f"run {run_id}: candidate passed the gates; awaiting approval",
                "report": self.report_url(run_id),
                **stop,
            },
        )
        await self._render(run_id)

    async def _wait_for_data(self, run_id: str, run_dir: Path) -> None:
        """The build found too few weak-slice rows: the run ends without training and does not
        count for cooldown or budget, so the policy starts one as soon as the rows arrive."""
        waiting = orjson.loads((run_dir / "waiting.json").read_bytes())
        log.info("runs: run %s waits for data: %s", run_id, waiting)
        metrics.distill_runs_total.labels(outcome="waiting").inc()
        counts = ", ".join(f"{k}: {v}" for k, v in waiting["rows"].items())
        await self._db(
            self.daemon.store.update_run,
            run_id,
            status="failed",
            detail={
                "waiting_for_data": waiting,
                "error": f"waiting for data: weak-slice rows {counts}; need {waiting['need']} each",
            },
        )
        await self._render(run_id)

    async def _fail(self, run_id: str, error: str) -> None:
        log.error("runs: run %s failed: %s", run_id, error)
        metrics.distill_runs_total.labels(outcome="failed").inc()
        with contextlib.suppress(Exception):
            await self._db(
                self.daemon.store.update_run, run_id, status="failed", detail={"error": error[:2000]}
            )
        self._alert(
            "WatchdogRunFailed",
            {"run": run_id, "severity": "critical"},
            {"summary": f"redistillation {run_id} failed: {error}"[:500], "report": self.report_url(run_id)},
        )
        await self._render(run_id)

    # --- promotion and review ----------------------------------------------------------------------

    async def promote(
        self, run_id: str, mode: str, actor: str, notes: dict[str, str] | None = None
    ) -> DistillRun:
        store = self.daemon.store
        row = await self._db(store.get_run, run_id)
        if row is None or row.status != "pending" or not row.candidate_version:
            raise RunError(f"run {run_id} has no candidate awaiting promotion")
        version = row.candidate_version

        def snapshot() -> None:
            with np.load(Path(row.run_dir) / "train.npz", allow_pickle=False) as data:
                probs = data["teacher_probs"] if "teacher_probs" in data.files else None
                write_reference(self.settings, version, data["x"], probs)

        await self._db(snapshot)
        await self.daemon.models.activate(version, actor=actor, reason=f"run {run_id} ({mode})", mode=mode)
        updated = await self._db(
            store.update_run, run_id, expect=("pending",), status="promoted", detail={"promoted_by": actor}
        )
        metrics.distill_runs_total.labels(outcome="promoted").inc()
        self._alert(
            "WatchdogPromotion",
            {"run": run_id, "severity": "info", "version": version},
            {
                "summary": f"student {version} promoted ({mode}) from run {run_id}",
                "report": self.report_url(run_id),
                **(notes or {}),
            },
        )
        await self._render(run_id)
        return updated or row

    async def approve(self, run_id: str, actor: str) -> DistillRun:
        return await self.promote(run_id, mode="approved", actor=actor)

    async def reject(self, run_id: str, actor: str, reason: str) -> DistillRun:
        updated = await self._db(
            self.daemon.store.update_run,
            run_id,
            expect=("pending",),
            status="declined",
            detail={"declined_by": actor, "decline_reason": reason},
        )
        if updated is None:
            raise RunError(f"run {run_id} is not awaiting approval")
        await self._db(self.daemon.store.audit, actor, "run.decline", run_id, reason=reason)
        await self._render(run_id)
        return updated

    # --- lifecycle ---------------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Touches this replica's running runs, so a new leader can tell them from orphans (blocking)."""
        for run_id in list(self.tasks):
            self.daemon.store.update_run(run_id, expect=("running",))

    def recover_orphans(self, stale_s: float) -> int:
        """Runs left `running` by a replica that stopped touching them are marked failed (blocking)."""
        n = 0
        cutoff = time.time() - stale_s
        for row in self.daemon.store.list_runs(50):
            owner = orjson.loads(row.detail_json).get("owner")
            if row.status == "running" and owner != self.owner and row.updated_at < cutoff:
                self.daemon.store.update_run(
                    row.id, expect=("running",), status="failed", detail={"error": "its replica stopped"}
                )
                metrics.distill_runs_total.labels(outcome="failed").inc()
                n += 1
        return n

    async def stop(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
