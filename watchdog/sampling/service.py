"""Shadow traffic: `offer` on the request path, a teacher worker off it.

`offer` is called by `/v1/predict` after the student answered. At one rate for every row it
costs a subtraction per request (the rows up to the next sampled one are counted down), with
per-slice rates one random draw per row; per sampled request, one tuple appended to a list.
The workers move those requests' rows into the waiting rows' columns (waiting.py) in chunks,
then take batches, ask every teacher (guarded: see teachers/guard.py), apply version pinning,
and hand the rows to a teacher process for the bulk write. `offer` never awaits, never
raises, and a row that finds the buffer full is dropped and counted.

Why the split: the sampled path runs for one request in ten, and by then its code and data
are out of the caches. Measured inside the running server, each step there costs several
times what it costs in a loop (`Pins.paused`, a generator, took 3.5 µs per sampled request
instead of well under one), and the whole per-row path took 13 to 19 µs per sampled request:
two to four percent of serving capacity at `rate: 0.1` (docs/sampling.md). The same steps in
the workers' loop run warm, a chunk of rows at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import metrics
from ..config import Settings, TeacherConfig
from ..store import SampleBatch, TeacherColumn
from ..teachers import CallFailed, GuardedTeacher, Pins, TeacherState
from ..teachers.child import TeacherProcesses, pack
from .slices import SliceRules
from .waiting import Rows, WaitingRows

if TYPE_CHECKING:
    from ..app import Daemon

log = logging.getLogger(__name__)

_OUTCOMES = ("stored", "dropped", "quarantined", "teacher_error")
FLUSH_ROWS = 2000  # write at once past this many answered rows, whatever the flush interval
MIN_EVAL_ROWS = 10  # fewest rows worth re-evaluating on when a change comes before the set is full
STOP_WRITE_TIMEOUT_S = 30.0  # how long shutdown waits for bulk writes already under way
NEVER = 2**30 - 1  # the rows `offer` passes at rate 0 before it looks again (a one-digit int)
ADMIT_CHUNK = 64  # offered requests moved into the waiting rows per event-loop step
GAPS_AHEAD = 512  # sampling gaps the workers keep drawn for `offer`
GAP_CAP = 2**62  # a gap never reached (a rate near the smallest float); fits numpy's int64


class SamplingService:
    """Both the daemon's `Sampler` (offer) and a `Component` (the teacher worker)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.sampling
        self.waiting = WaitingRows(self.cfg.queue_size)
        # Sampled requests as `offer` left them, (request, probs, row indexes, version, time),
        # until a worker admits their rows into `waiting`. `_kept` counts their rows; `_room` is
        # queue_size less the rows waiting, as the workers last saw it: kept and waiting rows
        # together stay within queue_size.
        self._offered: list[tuple[Any, np.ndarray, list[int], str, float]] = []
        self._kept = 0
        self._room = self.cfg.queue_size
        self._ready = asyncio.Event()  # set when a request is offered to an empty list
        self.rules = SliceRules(settings.slices, self.cfg)
        self.draw = random.Random().random
        # Rows still to pass before the next sampled one, at a constant rate; -1: none drawn yet,
        # or per-slice rates (each row draws).
        self._left = -1
        # Gaps drawn ahead by the workers (`_draw_ahead`): `offer` pops one rather than drawing it.
        self._gaps: list[int] = []
        self.teachers: dict[str, GuardedTeacher] = {}
        self.pins: Pins | None = None
        self.daemon: Daemon | None = None
        self.running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._frozen: set[str] = set()  # teachers whose eval set exists
        self._pending: list[SampleBatch] = []  # answered batches awaiting a write
        self._writes: set[asyncio.Task[None]] = set()  # bulk writes in progress
        self._processes: Any = None  # teachers.child.TeacherProcesses once started
        self._write_lock = asyncio.Lock()  # bulk writes and quarantine releases happen in order
        self._outcome = {o: metrics.samples_total.labels(outcome=o) for o in _OUTCOMES}
        for counter in self._outcome.values():
            counter.inc(0)

    # --- request path ----------------------------------------------------------------------------

    def offer(self, request: Any, probs: np.ndarray, version: str) -> None:
        """Bernoulli sampling per row; never blocks, never raises. A sampled request is kept as
        it is, for a worker to admit (`admit`): nothing else runs here, because here it runs cold."""
        try:
            left = self._left - len(probs)
            if left >= 0:  # one rate for all rows, and the next sampled row is further on: most requests
                self._left = left
                return
            hits = self._hits(request, len(probs))
            if not hits or not self.running:
                return
            offered = self._offered
            if not offered:
                self._ready.set()
            kept = self._kept + len(hits)
            if kept > self._room:  # the buffer is full
                self._outcome["dropped"].inc(len(hits))
                return
            self._kept = kept
            offered.append((request, probs, hits, version, time.time()))
        except Exception:
            metrics.sampler_errors_total.labels(stage="offer").inc()
            log.exception("sampling: offer failed (request unaffected)")

    def admit(self, most: int | None = None) -> None:
        """Moves the rows of the oldest `most` offered requests (all by default) into the waiting
        rows; a row that finds them full is dropped and counted. Requests offered while a teacher
        change has paused sampling are not sampled: they are let go uncounted."""
        offered = self._offered
        chunk = offered[:most] if most is not None else offered[:]
        del offered[: len(chunk)]
        self._kept -= sum(len(hits) for _, _, hits, _, _ in chunk)
        try:
            self._draw_ahead()
            if chunk and self.running and not (self.pins is not None and self.pins.paused):
                self._admit_rows(chunk)
        except Exception:
            metrics.sampler_errors_total.labels(stage="offer").inc()
            self._outcome["dropped"].inc(sum(len(hits) for _, _, hits, _, _ in chunk))
            log.exception("sampling: could not admit %d sampled requests", len(chunk))
        self._room = self.cfg.queue_size - len(self.waiting)

    def _admit_rows(self, chunk: list[tuple[Any, np.ndarray, list[int], str, float]]) -> None:
        xs, ps, ids, at, versions, given = [], [], [], [], [], []
        for request, probs, hits, version, when in chunk:
            if len(hits) == len(probs):  # every row (one-row requests): the request's own arrays
                xs.append(request.x)
                ps.append(probs)
                ids += request.ids
            else:
                xs.append(request.x[hits])
                ps.append(probs[hits])
                ids += [request.ids[i] for i in hits]
            k = len(hits)
            at += [when] * k
            versions += [version] * k
            given += [request.slice] * k
        try:
            kept = self.waiting.extend(np.concatenate(xs), np.concatenate(ps), ids, at, versions, given)
        except ValueError:  # rows of two widths: a student with other inputs was just activated
            kept = start = 0
            for x, p in zip(xs, ps, strict=True):  # request by request; the old width goes first
                end = start + len(x)
                part = ids[start:end], at[start:end], versions[start:end], given[start:end]
                kept += self.waiting.extend(x, p, *part)
                start = end
        if kept < len(ids):
            self._outcome["dropped"].inc(len(ids) - kept)

    def _hits(self, request: Any, n: int) -> list[int]:
        """The request's rows to sample.

        At one rate for every row, the rows between two sampled ones are counted down rather than
        drawn one by one: Bernoulli sampling's gaps are geometric, so one draw per sampled row
        gives the same sample, and a row that is not sampled costs `offer` a subtraction.
        """
        # Python's `random` holds the GIL; numpy's Generator drops and re-takes it on every
        # call, which costs the event loop a GIL hand-off (up to 5 ms) under load.
        rate = self.rules.constant
        if rate is None:  # per-slice rates: each row draws at its own
            rates = self.rules.rates(request.x, request.slice)
            each = rates.tolist() if isinstance(rates, np.ndarray) else [rates] * n
            draw = self.draw
            return [i for i, r in enumerate(each) if draw() < r]
        hits: list[int] = []
        gaps = self._gaps
        i = self._left if self._left >= 0 else (gaps.pop() if gaps else self._gap(rate))
        while i < n:
            hits.append(i)
            i += 1 + (gaps.pop() if gaps else self._gap(rate))
        self._left = i - n
        return hits

    def _draw_ahead(self) -> None:
        """Refills the gaps `_hits` pops, as `_gap` draws them but in one numpy step. Drawing one in
        `offer` took 9 µs per sampled request in the running server (a loop draws it in under
        one): rarely run code runs cold."""
        rate, gaps = self.rules.constant, self._gaps
        if rate is not None and len(gaps) < GAPS_AHEAD // 2:
            k = GAPS_AHEAD - len(gaps)
            if 0.0 < rate < 1.0:
                draw = self.draw
                uniform = np.fromiter((draw() for _ in range(k)), np.float64, k)
                with np.errstate(over="ignore"):  # inf: a rate near the smallest float
                    drawn = np.log(1.0 - uniform) / math.log1p(-rate)
                ahead = np.minimum(drawn, GAP_CAP).astype(np.int64).tolist()
            else:
                ahead = [self._gap(rate)] * k
            ahead.reverse()
            gaps[:0] = ahead  # `pop` takes from the end: the draws are used in the order drawn

    def _gap(self, rate: float) -> int:
        """Rows before the next sampled one, at `rate` per row (geometric)."""
        if rate >= 1.0:
            return 0
        if rate <= 0.0:  # none: look again after this many rows, an int small enough for fast arithmetic
            return NEVER
        gap = math.log(1.0 - self.draw()) / math.log1p(-rate)  # inf for a rate near the smallest float
        return int(gap) if gap < GAP_CAP else GAP_CAP

    # --- component -------------------------------------------------------------------------------

    async def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        daemon.sampler = self
        # Read at scrape time: a locked gauge set on every sampled row cost the event loop more.
        metrics.sample_queue_depth.set_function(lambda: len(self.waiting) + self._kept)
        daemon.teachers = self
        model = daemon.models.current
        if model is not None and self.settings.slices.bins:
            self.rules = SliceRules(self.settings.slices, self.cfg, model.card.feature_names)
            self._left = -1
            self._gaps.clear()
        self.pins = Pins(daemon.store, self.cfg.on_teacher_change, self._on_pin_event)
        configured = {t.name: t.pinned_version for t in self.settings.teachers}
        await asyncio.to_thread(self.pins.load, configured)
        self.running = await self._boot()

    async def _boot(self) -> bool:
        """Starts the teacher processes before readiness: the engine imports torch there, not here."""
        self._processes = TeacherProcesses(
            self.settings.teachers, self.cfg.concurrency, self.settings.server.background_cpus
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
        """Stops taking rows; rows still queued are counted as dropped (the request path never waits)."""
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
        left = len(self.waiting) + self._kept
        self._offered.clear()
        self._kept = 0
        if left:
            self._outcome["dropped"].inc(left)
            log.warning("sampling: %d queued rows dropped at shutdown", left)
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
            await self._admit()
            if len(self.waiting) < self.cfg.batch_size:
                # Let a batch gather: per-call and per-commit costs dominate small batches.
                await asyncio.sleep(self.cfg.batch_wait_s)
                await self._admit()
            batch = self.waiting.take(self.cfg.batch_size)
            self._room = self.cfg.queue_size - len(self.waiting)
            if not self.waiting and not self._offered:
                self._ready.clear()  # the next offer sets it again
            if batch is None:  # the other worker took them
                continue
            try:
                await self.process(batch)
            except asyncio.CancelledError:
                self._outcome["dropped"].inc(len(batch))
                raise
            except Exception:
                metrics.sampler_errors_total.labels(stage="worker").inc()
                self._outcome["dropped"].inc(len(batch))
                log.exception("sampling: a batch of %d rows was lost", len(batch))

    async def _admit(self) -> None:
        """`admit` a chunk per event-loop step: a quarter second of sampled requests at once would
        hold the loop for a millisecond or more."""
        while self._offered:
            self.admit(ADMIT_CHUNK)
            if self._offered:
                await asyncio.sleep(0)

    async def _flush_forever(self) -> None:
        refresh_every = self.settings.store.poll_interval_s
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.flush_s)
            await self._flush()
            if time.monotonic() - last_refresh >= refresh_every and self.pins is not None:
                last_refresh = time.monotonic()
                try:  # pins accepted through another replica take effect here too
                    self.pins.adopt(await asyncio.to_thread(self.pins.read_stored))
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
            counts = dict.fromkeys(_OUTCOMES, 0)
            for batch in pending:
                self._settle(batch)
                for outcome, n in batch.outcomes().items():
                    counts[outcome] += n
            try:
                await self._write(await pack(pending))
            except Exception:
                metrics.sampler_errors_total.labels(stage="store").inc()
                self._outcome["dropped"].inc(sum(len(b) for b in pending))
                log.exception("sampling: could not store %d rows", sum(len(b) for b in pending))
                return
        for outcome, n in counts.items():
            if n:
                self._outcome[outcome].inc(n)

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
        assert self.pins is not None and self.daemon is not None
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
        from ..evalset import freeze_from_samples

        assert self.pins is not None and self.daemon is not None
        store, size = self.daemon.store, self.cfg.eval_set_size
        for name, state in self.pins.teachers.items():
            if state.pinned is None or state.state != "ok" or name in self._frozen:
                continue
            if freeze_from_samples(store, name, state.pinned, size, size) or store.eval_count(name):
                self._frozen.add(name)

    # --- eval set and re-evaluation ------------------------------------------------------------

    async def _freeze_from_file(self) -> None:
        from ..evalset import load_file, rows_from_arrays

        assert self.daemon is not None and self.pins is not None and self.cfg.eval_set is not None
        store = self.daemon.store
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
        from ..teachers import TeacherAnswer

        parts, version = [], ""
        for start in range(0, len(x), self.cfg.batch_size):
            answer = await teacher.predict(x[start : start + self.cfg.batch_size])
            if version and answer.version != version:
                raise CallFailed("invalid", f"version changed mid-evaluation ({version} -> {answer.version})")
            version = answer.version
            parts.append(answer.probs)
        return TeacherAnswer(np.concatenate(parts), version)

    async def reevaluate(self, name: str, version: str) -> None:
        """Runs the candidate on the frozen eval set; a pass accepts it (audited as `reeval`)."""
        from ..evalset import freeze_from_samples, frozen, judge

        assert self.daemon is not None and self.pins is not None
        store = self.daemon.store
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
            self.pins.reject(name, version, reason=str(exc))
            await asyncio.to_thread(self.pins.persist)
            return
        result = judge(
            reference, answer.probs, self.cfg.reeval_min_agreement, self.settings.policy.max_regression
        )
        metrics.teacher_reevaluations_total.labels(
            teacher=name, outcome="passed" if result.passed else "failed"
        ).inc()
        if result.passed:
            await self.accept(name, version, actor="reeval", kind="reeval_passed", **result.as_dict())
        else:
            self.pins.reject(name, version, **result.as_dict())
            await asyncio.to_thread(self.pins.persist)

    async def accept(
        self, name: str, version: str | None, actor: str, kind: str = "accepted", **detail: Any
    ) -> TeacherState:
        """Pins `version` (default: the candidate) and releases its quarantined rows."""
        assert self.daemon is not None and self.pins is not None
        state = self.pins.accept(name, version, kind=kind, actor=actor, **detail)
        store = self.daemon.store

        def write() -> None:
            assert self.pins is not None
            self.pins.persist()
            if state.pinned:
                store.release_quarantine(name, state.pinned)
            store.audit(actor, f"teacher.{kind}", name, version=state.pinned, **detail)

        async with self._write_lock:
            await asyncio.to_thread(write)
        return state

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
                }
            )
        return out

    # --- alerting ----------------------------------------------------------------------------------

    def _alerts(self) -> Any:
        return self.daemon.alerts if self.daemon is not None else None

    def _on_circuit(self, name: str, opened: bool, error: str) -> None:
        alerts = self._alerts()
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
        alerts = self._alerts()
        if alerts is None:
            return
        labels = {"teacher": state.name, "severity": "critical"}
        if kind == "changed":
            summary = (
                f"teacher {state.name} answered with version {state.candidate or state.pinned}; "
                f"pinned was {before}; policy {self.cfg.on_teacher_change}"
            )
            notes = {
                "summary": summary,
                "new_version": str(state.candidate or state.pinned),
                "pinned_version": before,
                "policy": self.cfg.on_teacher_change,
            }
            if self.cfg.on_teacher_change == "accept":
                alerts.fire("WatchdogTeacherVersionChanged", labels, notes, ttl_s=alerts.cfg.repeat_s)
            else:
                alerts.fire("WatchdogTeacherVersionChanged", labels, notes)
        elif kind in ("accepted", "reeval_passed") and state.candidate is None:
            alerts.resolve("WatchdogTeacherVersionChanged", labels)
