"""The teacher worker: batches of sampled rows to every teacher, version pinning, bulk writes.

It runs in the shadow process (shadow.py), never in the serving one: rows arrive there in
chunks (`receive`), and the worker takes batches, asks every teacher (guarded: see
shadow/teachers/guard.py), applies version pinning, and hands the rows to a teacher process for the
bulk write. Its counters reach /metrics through the serving process (metrics.Remote), its
alerts through the serving process's alerter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distill_watchdog import metrics
from distill_watchdog.config import Settings, TeacherConfig
from distill_watchdog.errors import ConflictError, NotFoundError
from distill_watchdog.shadow.slices import SliceRules
from distill_watchdog.shadow.teachers import CallFailed, GuardedTeacher, Pins, TeacherState
from distill_watchdog.shadow.teachers.pool import TeacherProcesses, pack
from distill_watchdog.shadow.waiting import Rows, WaitingRows
from distill_watchdog.store import SampleBatch, Store, TeacherColumn

log = logging.getLogger(__name__)

OUTCOMES = ("stored", "dropped", "quarantined", "teacher_error")
FLUSH_ROWS = 2000  # write at once past this many answered rows, whatever the flush interval
MIN_EVAL_ROWS = 10  # fewest rows worth re-evaluating on when a change comes before the set is full
STOP_WRITE_TIMEOUT_S = 30.0  # how long shutdown waits for bulk writes already under way
PAUSES_KEPT = 8  # pauses remembered to judge rows offered during them that arrive after


class TeacherWorker:
    """Waiting rows, the workers that empty them, the pins, and the eval set of one daemon."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        alerts: Any = None,
        feature_names: Sequence[str] | None = None,
        on_taken: Callable[[], None] | None = None,
        on_change: Callable[[], None] | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.settings = settings
        self.cpus = cpus  # where the teacher processes run: the daemon's background CPUs
        self.cfg = settings.sampling
        self.store = store
        self.alerts = alerts  # fire/resolve, or None when no receiver is configured
        self.on_taken = on_taken  # called when rows leave the waiting rows (the sender's bound)
        self.on_change = on_change  # called when a pin or a circuit changes
        self.waiting = WaitingRows(self.cfg.queue_size)
        self._ready = asyncio.Event()  # set when rows arrive
        self.rules = SliceRules(settings.slices, self.cfg, feature_names)
        self.teachers: dict[str, GuardedTeacher] = {}
        self.pins: Pins | None = None
        self.running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._frozen: set[str] = set()  # teachers whose eval set exists
        self._pending: list[SampleBatch] = []  # answered batches awaiting a write
        self._writes: set[asyncio.Task[None]] = set()  # bulk writes in progress
        self._processes: Any = None  # teachers.child.TeacherProcesses once started
        self._write_lock = asyncio.Lock()  # bulk writes and quarantine releases happen in order
        self.in_hand = 0  # rows taken for a batch and not yet counted with an outcome
        self._paused_from: float | None = None  # when a teacher change paused sampling, while it does
        self._pauses: list[tuple[float, float]] = []  # the last few pauses, (from, until)
        self._outcome = {o: metrics.samples_total.labels(outcome=o) for o in OUTCOMES}
        for counter in self._outcome.values():
            counter.inc(0)

    def receive(self, rows: Rows) -> None:
        """Rows sampled by the serving process. Rows offered while a teacher change had paused
        sampling are not sampled: they are let go uncounted (by their time: they arrive here
        a moment after they were offered); a row that finds the waiting rows full is dropped
        and counted."""
        if not self.running:
            return
        self._track_pause()
        if self._paused_from is not None or self._pauses:
            rows = self._unpaused(rows)
            if not rows:
                return
        kept = self.waiting.extend(rows)
        if kept < len(rows):
            self._outcome["dropped"].inc(len(rows) - kept)
        if kept:
            self._ready.set()

    def _track_pause(self) -> None:
        paused = self.pins is not None and self.pins.paused
        if paused and self._paused_from is None:
            self._paused_from = time.time()
        elif not paused and self._paused_from is not None:
            self._pauses = [*self._pauses[-(PAUSES_KEPT - 1) :], (self._paused_from, time.time())]
            self._paused_from = None

    def _unpaused(self, rows: Rows) -> Rows:
        """The rows not offered while sampling was paused."""
        at = np.asarray(rows.at)
        hit = np.zeros(len(at), dtype=bool)
        for start, end in [*self._pauses, (self._paused_from or math.inf, math.inf)]:
            hit |= (at >= start) & (at < end)
        if not hit.any():
            return rows
        keep = np.flatnonzero(~hit).tolist()
        return Rows(
            rows.x[keep],
            rows.probs[keep],
            [rows.ids[i] for i in keep],
            [rows.at[i] for i in keep],
            [rows.versions[i] for i in keep],
            [rows.given[i] for i in keep],
        )

    # --- component -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.pins = Pins(self.store, self.cfg.on_teacher_change, self._on_pin_event)
        configured = {t.name: t.pinned_version for t in self.settings.teachers}
        await asyncio.to_thread(self.pins.load, configured)
        self._announce_all()  # a change left waiting before a restart still fires
        self.running = await self._boot()

    async def _boot(self) -> bool:
        """Starts the teacher processes: the engine imports torch there, not here."""
        self._processes = TeacherProcesses(
            self.settings.teachers, self.cfg.concurrency, list(self.cpus) if self.cpus else None
        )
        try:
            await self._processes.start()
        except Exception:
            metrics.sampler_errors_total.labels(stage="worker").inc()
            log.exception("sampling: the teacher processes cannot load the teachers; sampling is off")
            self._processes.close()
            return False
        for tcfg in self.settings.teachers:
            call = functools.partial(self._processes.call, tcfg.name)
            self.teachers[tcfg.name] = GuardedTeacher(tcfg, call, self._on_circuit)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()) for _ in range(self.cfg.concurrency)]
        self._tasks.append(loop.create_task(self._flush_forever()))
        if self.cfg.eval_set is not None:
            self._spawn(self._freeze_from_file())
        return True

    async def stop(self) -> None:
        """Stops taking rows; rows still waiting are counted as dropped, answered ones written."""
        self.running = False
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._flush()  # rows already answered are written, not lost
        if self._writes:  # writes whose callers were cancelled above
            _, unfinished = await asyncio.wait(self._writes, timeout=STOP_WRITE_TIMEOUT_S)
            if unfinished:
                log.warning("sampling: %d sample writes still running at shutdown", len(unfinished))
        left = self.waiting.take(len(self.waiting))
        if left is not None:
            self._outcome["dropped"].inc(len(left))
            log.warning("sampling: %d queued rows dropped at shutdown", len(left))
        if self._processes is not None:
            self._processes.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- worker ----------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._ready.wait()
            if len(self.waiting) < self.cfg.batch_size:
                # Let a batch gather: per-call and per-commit costs dominate small batches.
                await asyncio.sleep(self.cfg.batch_wait_s)
            batch = self.waiting.take(self.cfg.batch_size)
            if not self.waiting:
                self._ready.clear()  # the next rows set it again
            if batch is None:  # the other worker took them
                continue
            self.in_hand += len(batch)
            if self.on_taken is not None:
                self.on_taken()
            try:
                await self.process(batch)
            except asyncio.CancelledError:
                self._lose(len(batch))
                raise
            except Exception:
                metrics.sampler_errors_total.labels(stage="worker").inc()
                self._lose(len(batch))
                log.exception("sampling: a batch of %d rows was lost", len(batch))

    def _lose(self, rows: int) -> None:
        self._outcome["dropped"].inc(rows)
        self.in_hand -= rows

    async def _flush_forever(self) -> None:
        refresh_every = self.settings.store.poll_interval_s
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.flush_s)
            await self._flush()
            if time.monotonic() - last_refresh >= refresh_every and self.pins is not None:
                last_refresh = time.monotonic()
                try:  # pins accepted through another replica take effect here too
                    if self.pins.adopt(await asyncio.to_thread(self.pins.read_stored)):
                        self._announce_all()
                except Exception:
                    metrics.sampler_errors_total.labels(stage="store").inc()
                    log.exception("sampling: could not refresh teacher pins; will retry")

    async def _flush(self) -> None:
        """One bulk write of every batch the workers finished since the last flush.

        The write is a task of its own: a caller cancelled meanwhile (shutdown cancels the
        workers) leaves it to finish, and `stop` waits for it before ending the teacher
        processes, so answered rows are written or counted as dropped, never lost uncounted.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        write = asyncio.get_running_loop().create_task(self._store(pending))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        await asyncio.shield(write)

    async def _store(self, pending: list[SampleBatch]) -> None:
        async with self._write_lock:
            counts = dict.fromkeys(OUTCOMES, 0)
            for batch in pending:
                self._settle(batch)
                for outcome, n in batch.outcomes().items():
                    counts[outcome] += n
            rows = sum(len(b) for b in pending)
            try:
                await self._write(await pack(pending))
            except Exception:
                metrics.sampler_errors_total.labels(stage="store").inc()
                self._lose(rows)
                log.exception("sampling: could not store %d rows", rows)
                return
        for outcome, n in counts.items():
            if n:
                self._outcome[outcome].inc(n)
        self.in_hand -= rows

    def _settle(self, batch: SampleBatch) -> None:
        """Quarantine by the pins as they are at write time (an accept may have come meanwhile)."""
        assert self.pins is not None
        for name, column in batch.teachers.items():
            column.quarantined = column.probs is not None and not self.pins.trusted(name, column.version)

    def _applies(self, tcfg: TeacherConfig, slices: dict[str, str]) -> bool:
        if not tcfg.slices:
            return True
        labels = {f"{k}={v}" for k, v in slices.items()}
        return bool(labels.intersection(tcfg.slices))

    async def process(self, batch: Rows) -> None:
        assert self.pins is not None
        x = batch.x
        slices = self.rules.batch_slices(x, batch.given)
        columns: dict[str, TeacherColumn] = {}
        for name, teacher in self.teachers.items():
            if teacher.cfg.slices:
                rows = [j for j, sl in enumerate(slices) if self._applies(teacher.cfg, sl)]
            else:
                rows = list(range(len(x)))
            if not rows:
                continue
            try:
                answer = await teacher.predict(x if len(rows) == len(x) else x[rows])
            except CallFailed:
                columns[name] = TeacherColumn(rows, "", None)
                continue
            verdict = self.pins.observe(name, answer.version)
            columns[name] = TeacherColumn(rows, answer.version, answer.probs)
            if verdict.new_candidate and self.cfg.on_teacher_change != "accept":
                self._spawn(self.reevaluate(name, answer.version))
        self._pending.append(
            SampleBatch(
                request_ids=batch.ids,
                at=batch.at,
                features=x,
                student_probs=batch.probs,
                student_versions=batch.versions,
                slices=slices,
                teachers=columns,
            )
        )
        if sum(len(b) for b in self._pending) >= FLUSH_ROWS:
            await self._flush()

    async def _write(self, parts: list[bytes]) -> None:
        """Pin changes first (so events precede their rows), then the rows — serialised and inserted
        by a teacher process, off this process's GIL — then eval-set freezing until it is frozen."""
        assert self.pins is not None
        if self.pins.pending:
            await asyncio.to_thread(self.pins.persist)
        await self._processes.store_rows(self.settings.store_url, parts)
        if self.cfg.eval_set is None and any(
            s.pinned is not None and s.state == "ok" and n not in self._frozen
            for n, s in self.pins.teachers.items()
        ):
            await asyncio.to_thread(self._freeze)

    def _freeze(self) -> None:
        from distill_watchdog.evalset import freeze_from_samples

        assert self.pins is not None
        store, size = self.store, self.cfg.eval_set_size
        for name, state in self.pins.teachers.items():
            if state.pinned is None or state.state != "ok" or name in self._frozen:
                continue
            if freeze_from_samples(store, name, state.pinned, size, size) or store.eval_count(name):
                self._frozen.add(name)

    # --- eval set and re-evaluation ------------------------------------------------------------

    async def _freeze_from_file(self) -> None:
        from distill_watchdog.evalset import load_file, rows_from_arrays

        assert self.pins is not None and self.cfg.eval_set is not None
        store = self.store
        try:
            x, y, sl = await asyncio.to_thread(load_file, self.cfg.eval_set)
        except (OSError, ValueError, KeyError) as exc:
            metrics.sampler_errors_total.labels(stage="worker").inc()
            log.error("sampling: cannot read eval set %s: %s", self.cfg.eval_set, exc)
            return
        for name, teacher in self.teachers.items():
            if await asyncio.to_thread(store.eval_count, name):
                continue
            try:
                answer = await self._predict_all(teacher, x)
            except CallFailed as exc:
                log.error("sampling: teacher %s could not label the eval set: %s", name, exc)
                continue
            self.pins.observe(name, answer.version)
            rows = rows_from_arrays(name, answer.version, "file", x, answer.probs, y, sl)
            await asyncio.to_thread(self.pins.persist)
            await asyncio.to_thread(store.add_eval_rows, rows)
            log.info(
                "sampling: froze %d eval rows for teacher %s (version %s)", len(rows), name, answer.version
            )

    async def _predict_all(self, teacher: GuardedTeacher, x: np.ndarray) -> Any:
        from distill_watchdog.shadow.teachers import TeacherAnswer

        parts, version = [], ""
        for start in range(0, len(x), self.cfg.batch_size):
            answer = await teacher.predict(x[start : start + self.cfg.batch_size])
            if version and answer.version != version:
                raise CallFailed("invalid", f"version changed mid-evaluation ({version} -> {answer.version})")
            version = answer.version
            parts.append(answer.probs)
        return TeacherAnswer(np.concatenate(parts), version)

    async def reevaluate(self, name: str, version: str) -> None:
        """Runs the candidate on the frozen eval set and records the result (shown with its alert);
        under `reevaluate` a pass accepts it (audited, actor `reeval`)."""
        from distill_watchdog.evalset import freeze_from_samples, frozen, judge

        assert self.pins is not None
        store = self.store
        try:
            await asyncio.to_thread(self.pins.persist)
            reference = await asyncio.to_thread(frozen, store, name)
            if reference is None:  # not yet frozen: freeze what the pinned version answered so far
                pinned = self.pins.teachers[name].pinned or ""
                size = self.cfg.eval_set_size
                least = min(size, MIN_EVAL_ROWS)
                await asyncio.to_thread(freeze_from_samples, store, name, pinned, size, least)
                reference = await asyncio.to_thread(frozen, store, name)
            if reference is None:
                raise CallFailed("invalid", "no frozen eval set yet; an operator must accept")
            answer = await self._predict_all(self.teachers[name], reference.x)
            if answer.version != version:
                raise CallFailed("invalid", f"teacher answered version {answer.version} during re-evaluation")
        except CallFailed as exc:
            metrics.teacher_reevaluations_total.labels(teacher=name, outcome="error").inc()
            self.pins.reevaluated(name, version, False, outcome="error", reason=str(exc))
            await asyncio.to_thread(self.pins.persist)
            return
        result = judge(
            reference, answer.probs, self.cfg.reeval_min_agreement, self.settings.policy.max_regression
        )
        metrics.teacher_reevaluations_total.labels(
            teacher=name, outcome="passed" if result.passed else "failed"
        ).inc()
        figures = {k: v for k, v in result.as_dict().items() if k != "passed"}
        self.pins.reevaluated(name, version, result.passed, **figures)
        await asyncio.to_thread(self.pins.persist)
        # Only `reevaluate` acts on a pass; under `quarantine` and `pause` a person decides.
        state = self.pins.teachers[name]
        if result.passed and self.cfg.on_teacher_change == "reevaluate" and state.candidate == version:
            await self.accept(name, version, actor="reeval", **{**figures, "reason": "passed re-evaluation"})

    async def accept(
        self, name: str, version: str | None, actor: str, kind: str = "accepted", **detail: Any
    ) -> TeacherState:
        """Pins `version` (default: the candidate) and releases its quarantined rows."""
        assert self.pins is not None
        current = self.pins.teachers.get(name)
        if current is None:
            raise NotFoundError(f"teacher: unknown teacher {name[:64]!r}")
        if version is None and current.candidate is None:
            raise ConflictError(f"teacher {name}: no candidate version to accept")
        state = self.pins.accept(name, version, kind=kind, actor=actor, **detail)
        store = self.store

        def write() -> None:
            assert self.pins is not None
            self.pins.persist()
            if state.pinned:
                store.release_quarantine(name, state.pinned)
            store.audit(actor, f"teacher.{kind}", name, version=state.pinned, **detail)

        async with self._write_lock:
            await asyncio.to_thread(write)
        return state

    def states(self) -> dict[str, TeacherState]:
        """Copies of the pin states (sent to the serving process, which must not see them change)."""
        if self.pins is None:
            return {}
        return {
            name: dataclasses.replace(s, seen=set(s.seen), trusted=set(s.trusted))
            for name, s in self.pins.teachers.items()
        }

    def status(self) -> list[dict[str, Any]]:
        assert self.pins is not None
        out = []
        for tcfg in self.settings.teachers:
            state = self.pins.teachers.get(tcfg.name) or TeacherState(name=tcfg.name)
            teacher = self.teachers.get(tcfg.name)
            out.append(
                {
                    **state.as_dict(),
                    "kind": tcfg.kind,
                    "loaded": teacher is not None,
                    "circuit_open": teacher is not None and teacher.breaker.is_open,
                    "last_error": teacher.last_error if teacher else None,
                    "reevaluation_summary": _reevaluation_text(state.reevaluation) if state.candidate else "",
                }
            )
        return out

    # --- alerting ----------------------------------------------------------------------------------

    def _on_circuit(self, name: str, opened: bool, error: str) -> None:
        if self.on_change is not None:
            self.on_change()
        alerts = self.alerts
        if alerts is None:
            return
        if opened:
            alerts.fire(
                "WatchdogTeacherUnavailable",
                {"teacher": name, "severity": "warning"},
                {"summary": f"teacher {name} is failing; its circuit is open", "last_error": error},
            )
        else:
            alerts.resolve("WatchdogTeacherUnavailable", {"teacher": name, "severity": "warning"})

    def _on_pin_event(self, kind: str, state: TeacherState, before: str) -> None:
        self._track_pause()
        if self.on_change is not None:
            self.on_change()  # the new state reaches the daemon before the alert does
        self._announce(state, before if kind == "changed" else None)

    def _announce(self, state: TeacherState, changed_from: str | None = None) -> None:
        """The teacher's `WatchdogTeacherVersionChanged`, from its state: firing while a candidate
        waits (re-sent, its re-evaluation attached), resolved once none does. A change accepted
        at once (`changed_from`, no candidate) is raised and resolved: the alerter keeps such a
        notice alive for `alerts.min_notice_s` so that it is delivered."""
        alerts = self.alerts
        if alerts is None:
            return
        labels = {"teacher": state.name, "severity": "critical"}
        name, teacher = "WatchdogTeacherVersionChanged", {"teacher": state.name}
        if state.candidate is not None:  # one alert, for the version waiting now
            versioned = {**labels, "version": state.candidate}
            alerts.reconcile(name, [(versioned, self._notes(state, state.pinned or ""))], scope=teacher)
            return
        if changed_from is not None:
            alerts.fire(name, {**labels, "version": str(state.pinned)}, self._notes(state, changed_from))
        alerts.resolve(name, teacher)  # every version's, by teacher

    def _announce_all(self) -> None:
        """Alerts for the teachers' current states (at start, and after adopting pins that another
        replica changed): a change still waiting keeps firing until a person accepts it."""
        if self.pins is not None:
            for state in self.pins.teachers.values():
                self._announce(state)

    def _notes(self, state: TeacherState, pinned: str) -> dict[str, str]:
        policy = self.cfg.on_teacher_change
        new = state.candidate or state.pinned
        if state.candidate is None:
            what = "accepted at once"
        elif policy == "reevaluate":
            what = "quarantined; accepted if it passes re-evaluation, else by a person"
        else:
            what = f"{'sampling paused' if policy == 'pause' else 'quarantined'} until a person accepts it"
        notes = {
            "summary": f"teacher {state.name} answered with version {new}; pinned was {pinned}; "
            f"policy {policy}: {what}",
            "new_version": str(new),
            "pinned_version": str(pinned),
            "policy": policy,
        }
        if state.candidate is not None:
            notes["reevaluation"] = _reevaluation_text(state.reevaluation)
            notes["accept"] = f"POST /admin/teachers/{state.name}/accept (or the UI)"
        return notes


def _reevaluation_text(result: dict[str, Any] | None) -> str:
    """One line for an alert annotation and the UI."""
    if result is None:
        return "pending"
    if result.get("outcome") == "error":
        return f"could not run: {result.get('reason', '')}"[:300]
    verdict = "passed" if result.get("passed") else "failed"
    text = f"{verdict}: agreement {float(result.get('agreement') or 0):.3f} on {result.get('rows')} rows"
    if result.get("accuracy_new") is not None:
        text += f", accuracy {result['accuracy_new']:.3f} (pinned {result.get('accuracy_pinned') or 0:.3f})"
    if result.get("reason"):
        text += f" ({result['reason']})"
    return text[:300]
