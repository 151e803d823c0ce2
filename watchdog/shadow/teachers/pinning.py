"""Version pinning: a teacher answering with a version other than its pin is a governed event.

Each teacher has a pin (from config, else the first version seen; kept in the store, which
wins over config once set so that accepted versions survive restarts). A different version
records a `changed` event, alerts, counts `watchdog_teacher_version_changes_total`, and then
by `sampling.on_teacher_change`:
- `quarantine`: rows of the new version are marked and kept out of training/comparison until
  a person accepts it; its re-evaluation on the frozen eval set is recorded and shown, not acted on;
- `reevaluate`: as `quarantine`, but a passing re-evaluation accepts it;
- `accept`: the new version becomes the pin at once;
- `pause`: sampling stops until a person accepts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from distill_watchdog import metrics
from distill_watchdog.store import Store
from distill_watchdog.store.tables import TeacherEvent, TeacherPin

log = logging.getLogger(__name__)

Notify = Callable[[str, "TeacherState", str], None]  # (event kind, state, previous pin)
REEVALUATED = ("reeval_passed", "reeval_failed")


@dataclass
class TeacherState:
    name: str
    pinned: str | None = None
    candidate: str | None = None
    state: str = "ok"  # ok | quarantine | paused
    seen: set[str] = field(default_factory=set)
    trusted: set[str] = field(default_factory=set)  # every version pinned so far
    reevaluation: dict[str, object] | None = None  # the candidate's latest re-evaluation

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pinned_version": self.pinned,
            "candidate_version": self.candidate,
            "state": self.state,
            "versions_seen": sorted(self.seen),
            "reevaluation": self.reevaluation,
        }


@dataclass(slots=True)
class Verdict:
    quarantined: bool
    new_candidate: bool = False  # a version change just happened (re-evaluate it)


class Pins:
    """In-memory pin state per teacher, written through to the store on every change.

    `observe` runs on the event loop and only touches memory; store writes are handed to
    `persist` (the worker runs them in a thread).
    """

    def __init__(self, store: Store, policy: str, notify: Notify | None = None) -> None:
        self.store = store
        self.policy = policy
        self.notify = notify
        self.teachers: dict[str, TeacherState] = {}
        self.pending: list[tuple[TeacherPin, TeacherEvent]] = []
        self._lock = threading.Lock()  # persist runs in worker threads
        self._persisted = 0  # local changes written so far (see adopt)

    def load(self, configured: dict[str, str | None]) -> None:
        """Reads pins from the store (blocking; call from a thread at start)."""
        stored = {p.teacher: p for p in self.store.list_pins()}
        for name, config_pin in configured.items():
            pin = stored.get(name)
            state = TeacherState(name=name, pinned=config_pin)
            if pin is not None and pin.pinned_version is not None:
                state.pinned, state.candidate, state.state = (
                    pin.pinned_version,
                    pin.candidate_version,
                    pin.state,
                )
            self.teachers[name] = state
            for version in filter(None, (state.pinned, state.candidate)):
                self._seen(state, version)
            if state.candidate is not None:
                state.reevaluation = self._last_reevaluation(name, state.candidate)

    def _last_reevaluation(self, teacher: str, version: str) -> dict[str, object] | None:
        for event in self.store.teacher_events(teacher, 50):  # newest first
            if event.kind in REEVALUATED and event.to_version == version:
                return {"version": version, "at": event.at, **orjson.loads(event.detail_json)}
        return None

    def read_stored(self) -> tuple[int, dict[str, TeacherPin]]:
        """The stored pins, with the count of local writes they already reflect (blocking)."""
        with self._lock:  # a persist cannot land between the count and the read
            return self._persisted, {p.teacher: p for p in self.store.list_pins()}

    def adopt(self, snapshot: tuple[int, dict[str, TeacherPin]]) -> bool:
        """Applies a `read_stored` snapshot where `observe` runs (the event loop); whether anything
        changed. A snapshot older than a local change (still pending, or persisted since the
        read) is dropped: it would undo that change."""
        persisted, stored = snapshot
        if self.pending or persisted != self._persisted:
            return False
        changed = False
        for name, state in self.teachers.items():
            pin = stored.get(name)
            if pin is None or pin.pinned_version is None:
                continue
            current = (state.pinned, state.candidate, state.state)
            if (pin.pinned_version, pin.candidate_version, pin.state) != current:
                if pin.candidate_version != state.candidate:
                    state.reevaluation = None
                state.pinned, state.candidate, state.state = (
                    pin.pinned_version,
                    pin.candidate_version,
                    pin.state,
                )
                self._seen(state, pin.pinned_version)
                changed = True
        return changed

    @property
    def paused(self) -> bool:
        return any(t.state == "paused" for t in self.teachers.values())

    def trusted(self, teacher: str, version: str) -> bool:
        """A version that is or was pinned in this process: its rows are not quarantined."""
        state = self.teachers.get(teacher)
        return state is not None and (version == state.pinned or version in state.trusted)

    def _seen(self, state: TeacherState, version: str) -> None:
        state.seen.add(version)
        if state.pinned is not None:
            state.trusted.add(state.pinned)
        for v in state.seen:
            metrics.teacher_version_info.labels(teacher=state.name, version=v, pinned="false").set(
                0 if v == state.pinned else 1
            )
            metrics.teacher_version_info.labels(teacher=state.name, version=v, pinned="true").set(
                1 if v == state.pinned else 0
            )

    def _record(
        self, state: TeacherState, kind: str, before: str | None, after: str | None, **detail: object
    ) -> None:
        pin = TeacherPin(
            teacher=state.name,
            pinned_version=state.pinned,
            candidate_version=state.candidate,
            state=state.state,
            updated_at=0.0,
        )
        event = TeacherEvent(
            at=0.0,
            teacher=state.name,
            kind=kind,
            from_version=before,
            to_version=after,
            detail_json=orjson.dumps(detail, default=str).decode(),
        )
        self.pending.append((pin, event))

    def persist(self) -> None:
        """Writes queued pin changes and events in order (blocking).

        A change leaves `pending` only once written, and the count moves first: `adopt`, on the
        event loop meanwhile, always sees it pending or counted, never neither (it would undo
        it with a snapshot read before it). A failed write stays pending for the next call.
        """
        with self._lock:
            while self.pending:
                pin, event = self.pending[0]
                event.at = time.time()
                self.store.save_pin(pin, event)
                self._persisted += 1
                self.pending.pop(0)

    def observe(self, teacher: str, version: str) -> Verdict:
        state = self.teachers.setdefault(teacher, TeacherState(name=teacher))
        if version not in state.seen:
            self._seen(state, version)
        if state.pinned is None:
            state.pinned = version
            self._seen(state, version)
            self._record(state, "pinned", None, version, reason="first version seen")
            return Verdict(False)
        if version == state.pinned:
            return Verdict(False)
        if version == state.candidate:
            return Verdict(state.state != "ok")
        before = state.pinned
        metrics.teacher_version_changes_total.labels(teacher=teacher).inc()
        log.warning(
            "teacher %s: answered with version %s, pinned is %s (policy %s)",
            teacher,
            version,
            before,
            self.policy,
        )
        if self.policy == "accept":
            state.pinned, state.candidate, state.state = version, None, "ok"
            self._seen(state, version)
            self._record(state, "changed", before, version, policy="accept")
            self._notify("changed", state, before)
            return Verdict(False)
        state.candidate, state.reevaluation = version, None
        state.state = "paused" if self.policy == "pause" else "quarantine"
        self._record(state, "changed", before, version, policy=self.policy)
        self._notify("changed", state, before)
        return Verdict(True, new_candidate=True)

    def accept(
        self, teacher: str, version: str | None, kind: str = "accepted", **detail: object
    ) -> TeacherState:
        """Makes `version` (default: the candidate) the pin; its quarantined rows count again."""
        state = self.teachers[teacher]
        version = version or state.candidate or state.pinned
        before = state.pinned
        state.pinned, state.state = version, "ok"
        if state.candidate == version:
            state.candidate, state.reevaluation = None, None
        elif state.candidate is not None:
            state.state = "quarantine" if self.policy != "pause" else "paused"
        if version is not None:
            self._seen(state, version)
        self._record(state, kind, before, version, **detail)
        self._notify(kind, state, before or "")
        return state

    def reevaluated(self, teacher: str, version: str, passed: bool, **detail: object) -> None:
        """Records a re-evaluation of `version`; the pin does not move (see `accept`)."""
        state = self.teachers[teacher]
        kind = "reeval_passed" if passed else "reeval_failed"
        result = {**detail, "passed": passed}
        self._record(state, kind, state.pinned, version, **result)
        if version == state.candidate:
            state.reevaluation = {"version": version, "at": time.time(), **result}
        self._notify(kind, state, state.pinned or "")

    def _notify(self, kind: str, state: TeacherState, before: str) -> None:
        if self.notify is not None:
            try:
                self.notify(kind, state, before)
            except Exception:
                metrics.sampler_errors_total.labels(stage="worker").inc()
                log.exception("teacher %s: notification failed", state.name)
