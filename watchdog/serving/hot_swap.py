"""Which student is served, and swapping it without dropping a request.

A new version is loaded and warmed in a worker thread first; only then is the reference
switched (one assignment). Batches already running keep their reference to the old session
and finish on it. A failed load changes nothing. Replicas follow activations made elsewhere
by polling the registry.
"""

from __future__ import annotations

import asyncio
import logging

from distill_watchdog import metrics
from distill_watchdog.errors import WatchdogError
from distill_watchdog.registry import Registry
from distill_watchdog.runtime import LoadedModel

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, registry: Registry, warm_batch: int) -> None:
        self.registry = registry
        self.warm_batch = warm_batch
        self.current: LoadedModel | None = None
        self._lock = asyncio.Lock()
        self._failed_version: str | None = None

    def get(self) -> LoadedModel | None:
        return self.current

    def _switch(self, model: LoadedModel) -> None:
        previous = self.current.version if self.current else None
        self.current = model
        metrics.set_active_model(model.version)
        if previous != model.version:
            log.info(
                "serving: now serving %s (was %s; %d ORT thread(s), %.0f µs for one row)",
                model.version,
                previous,
                model.threads,
                model.single_row_seconds * 1e6,
            )

    async def _load(self, version: str) -> LoadedModel:
        try:
            model = await asyncio.to_thread(self.registry.load, version, self.warm_batch)
        except WatchdogError:
            metrics.model_loads_total.labels(outcome="failed").inc()
            raise
        metrics.model_loads_total.labels(outcome="ok").inc()
        return model

    async def activate(self, version: str, actor: str, reason: str = "", mode: str = "manual") -> LoadedModel:
        """Loads and warms `version`, records the activation, then switches."""
        async with self._lock:
            model = await self._load(version)
            await asyncio.to_thread(self.registry.record_activation, version, actor, reason)
            self._switch(model)
            metrics.promotions_total.labels(mode=mode).inc()
            return model

    async def rollback(self, actor: str, reason: str = "") -> LoadedModel:
        async with self._lock:
            target = await asyncio.to_thread(self.registry.rollback_target)
            model = await self._load(target)
            await asyncio.to_thread(self.registry.record_rollback, actor, reason)
            self._switch(model)
            metrics.promotions_total.labels(mode="rollback").inc()
            return model

    async def sync(self) -> None:
        """Serves what the store says is active (start-up, and activations by other replicas)."""
        async with self._lock:
            wanted = await asyncio.to_thread(self.registry.active_version)
            if wanted is None or (self.current and self.current.version == wanted):
                return
            if wanted == self._failed_version:
                return  # already reported; wait for a different activation
            try:
                model = await self._load(wanted)
            except WatchdogError as exc:
                self._failed_version = wanted
                log.error("serving: cannot load active version %s: %s; keeping the current one", wanted, exc)
                return
            self._failed_version = None
            self._switch(model)

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:  # a database outage must not end the poller
                log.exception("serving: registry poll failed; will retry")
