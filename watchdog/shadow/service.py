"""The sampling component: sampling on the request path here, the teacher worker in the shadow
process (shadow.py), and what the admin API, the UI and the scheduler ask of the teachers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from distill_watchdog import metrics
from distill_watchdog.config import Settings
from distill_watchdog.shadow.offer import RequestSampler
from distill_watchdog.shadow.process import ShadowProcess

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon
    from distill_watchdog.shadow.teachers import TeacherState

log = logging.getLogger(__name__)


class SamplingService:
    """A `Component`: starts the shadow process, then serves `offer` (daemon.sampler) and the
    teachers' state and operations (daemon.teachers)."""

    slot = "teachers"  # the Daemon field create_app fills with it

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.shadow: ShadowProcess | None = None
        self.sampler: RequestSampler | None = None
        self._admission: asyncio.Task[None] | None = None

    async def start(self, daemon: Daemon) -> None:
        model = daemon.models.current
        names = list(model.card.feature_names) if model is not None and model.card.feature_names else None
        self.shadow = ShadowProcess(self.settings, names, daemon.alerts, daemon.background_cpus)
        self.sampler = RequestSampler(self.settings, self.shadow, names)
        # Read at scrape time: a locked gauge set on every sampled row cost the event loop more.
        metrics.track(metrics.sample_queue_depth, self, self.sampler.depth)
        daemon.sampler = self.sampler
        try:
            await self.shadow.start()
        except Exception:
            metrics.sampler_errors_total.labels(stage="worker").inc()
            log.exception("sampling: the shadow process cannot start; sampling is off")
            return
        self.sampler.running = self.shadow.running
        if self.sampler.running:
            self._admission = asyncio.get_running_loop().create_task(self.sampler.run())

    async def stop(self) -> None:
        """Stops sampling; requests kept and not yet handed on are counted as dropped, and the
        shadow process writes or counts the rows it holds (the request path never waits)."""
        if self.sampler is not None:
            self.sampler.running = False
        if self._admission is not None:
            self._admission.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._admission
        if self.shadow is not None:
            await self.shadow.stop()
        if self.sampler is not None and (left := self.sampler.drop_kept()):
            log.warning("sampling: %d sampled rows dropped at shutdown", left)
        metrics.untrack(metrics.sample_queue_depth, self)

    # --- teachers -------------------------------------------------------------------------------

    @property
    def states(self) -> dict[str, TeacherState]:
        """Each teacher's pin state, as the shadow process last sent it."""
        return self.shadow.states if self.shadow is not None else {}

    @property
    def loaded(self) -> set[str]:
        """Teachers whose adapters are built (the worker can call them)."""
        return {t["name"] for t in self.status() if t.get("loaded")}

    def status(self) -> list[dict[str, Any]]:
        return self.shadow.teacher_status if self.shadow is not None else []

    async def accept(
        self, name: str, version: str | None, actor: str, kind: str = "accepted", **detail: Any
    ) -> TeacherState:
        """Pins `version` (default: the candidate) and releases its quarantined rows."""
        assert self.shadow is not None
        return await self.shadow.call("accept", name, version, actor=actor, kind=kind, **detail)

    async def reevaluate(self, name: str, version: str) -> None:
        """Runs the candidate on the frozen eval set; a pass accepts it (audited as `reeval`)."""
        assert self.shadow is not None
        await self.shadow.call("reevaluate", name, version)
