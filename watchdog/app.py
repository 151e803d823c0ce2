"""The ASGI application factory: wires store, registry, serving and the background components.

Background work (sampling, scheduler) plugs in as `Component`s started and stopped by the
lifespan; the request path only ever touches the batcher and a non-blocking sampler offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from distill_watchdog import background, metrics
from distill_watchdog.config import Settings
from distill_watchdog.errors import WatchdogError
from distill_watchdog.registry import Registry
from distill_watchdog.serving import routes
from distill_watchdog.serving.asgi import send_error
from distill_watchdog.serving.batcher import MicroBatcher, ModelUnavailableError
from distill_watchdog.serving.endpoints import route_label, starlette_routes
from distill_watchdog.serving.hot_swap import ModelManager
from distill_watchdog.serving.validation import BadRequest
from distill_watchdog.store import Store

if TYPE_CHECKING:
    from distill_watchdog.alerts import Alerter
    from distill_watchdog.loop.runs import RunManager
    from distill_watchdog.loop.scheduler import Scheduler
    from distill_watchdog.shadow import SamplingService

log = logging.getLogger(__name__)


class Component(Protocol):
    """A background part of the daemon (sampling worker, scheduler, ...).

    One that others use names its `Daemon` field in a class attribute `slot`: `build_daemon`
    fills the slot, and makes what the components share, before any component starts, so none
    depends on another's start order.
    """

    async def start(self, daemon: Daemon) -> None: ...
    async def stop(self) -> None: ...


class Sampler(Protocol):
    def offer(self, request: Any, probs: Any, version: str) -> None: ...


@dataclass
class Daemon:
    settings: Settings
    store: Store
    registry: Registry
    models: ModelManager
    batcher: MicroBatcher = field(init=False)
    sampler: Sampler | None = None
    alerts: Alerter | None = None  # fire/resolve never block
    teachers: SamplingService | None = None  # teacher states, admin accept
    scheduler: Scheduler | None = None  # leader, last cycle
    runs: RunManager | None = None  # trigger, approve, reject: made by build_daemon with the scheduler
    # `server.background_cpus` as CPU numbers, resolved once at start (None: not pinned): what
    # every child process is given. The settings keep the entries as written.
    background_cpus: tuple[int, ...] | None = None
    components: list[Component] = field(default_factory=list)
    draining: bool = False
    started_at: float = field(default_factory=time.time)
    # The hot routes' limits as plain ints: a pydantic model's attribute goes through its
    # __getattr__ hook (about four times a plain attribute's cost), several times a request.
    max_body_bytes: int = field(init=False)
    max_rows_per_request: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_body_bytes = self.settings.server.max_body_bytes
        self.max_rows_per_request = self.settings.server.max_rows_per_request


_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")


class WatchdogASGI:
    """Dispatches the hot routes directly, the rest to Starlette; counts every answer."""

    def __init__(self, daemon: Daemon, framework: Starlette) -> None:
        self.daemon = daemon
        self.framework = framework
        self._children: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}
        self.in_flight = 0  # read at scrape time (tracked while the daemon runs): a plain int

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.framework(scope, receive, send)
            return
        path: str = scope["path"]
        label = route_label(path)
        begin = time.perf_counter()
        self.in_flight += 1
        status = 500
        try:
            if label == "/v1/predict" or label.endswith("/infer"):
                # Predict and infer send once, at the end, on success: no send wrapper, and no
                # helper coroutine (a frame created, suspended and resumed on every request).
                try:
                    if scope["method"] != "POST":
                        raise BadRequest(405, f"method {scope['method']} not allowed here; use POST")
                    if label == "/v1/predict":
                        await routes.predict(self.daemon, scope, receive, send)
                    else:
                        name = _INFER.match(path).group(1)  # type: ignore[union-attr]
                        await routes.infer(self.daemon, name, scope, receive, send)
                    status = 200
                except Exception as exc:
                    status = await self._answer_error(exc, label, send)
            else:
                status = await self._framework(label, scope, receive, send)
        finally:
            self.in_flight -= 1
            key = (label, status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = metrics.requests_total.labels(route=label, code=str(status))
            child.inc()
            hist = self._durations.get(label)
            if hist is None:
                hist = self._durations[label] = metrics.request_duration_seconds.labels(route=label)
            hist.observe(time.perf_counter() - begin)

    async def _framework(self, label: str, scope: dict[str, Any], receive: Any, send: Any) -> int:
        status = 500
        started = False

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        try:
            await self.framework(scope, receive, send_wrapper)
            return status
        except Exception as exc:
            if started:
                if isinstance(exc, ConnectionAbortedError):
                    return 499
                if not isinstance(exc, BadRequest | WatchdogError | ModelUnavailableError):
                    metrics.internal_errors_total.labels(route=label).inc()
                    log.exception("serving: unexpected error on %s", label)
                return status
            return await self._answer_error(exc, label, send)

    async def _answer_error(self, exc: Exception, label: str, send: Any) -> int:
        """Answers an exception raised before anything was sent; returns the status counted."""
        if isinstance(exc, BadRequest):
            status, message = exc.status, exc.message
        elif isinstance(exc, WatchdogError):
            status, message = exc.status_code, str(exc)
        elif isinstance(exc, ModelUnavailableError):
            status, message = 503, str(exc)
        elif isinstance(exc, ConnectionAbortedError):
            return 499
        else:
            metrics.internal_errors_total.labels(route=label).inc()
            log.exception("serving: unexpected error on %s", label, exc_info=exc)
            status, message = 500, "internal error; see the daemon's log"
        await send_error(send, status, message)
        return status


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"not found: {request.url.path[:200]}", 405: f"method {request.method} not allowed here"}
    return routes.error(exc.status_code, message.get(exc.status_code, str(exc.detail)))


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return routes.error(exc.status, exc.message)


async def _watchdog_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WatchdogError)
    return routes.error(exc.status_code, str(exc))


def build_daemon(
    settings: Settings, components: Sequence[Component] = (), background_cpus: tuple[int, ...] | None = None
) -> Daemon:
    """The container the components are given: every part they share exists before any starts."""
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=settings.student.ort_threads)
    models = ModelManager(registry, warm_batch=settings.student.max_batch_size)
    daemon = Daemon(
        settings=settings,
        store=store,
        registry=registry,
        models=models,
        background_cpus=background_cpus,
        components=list(components),
    )
    for component in daemon.components:
        slot = getattr(component, "slot", None)
        if slot is not None:
            setattr(daemon, slot, component)
    if daemon.scheduler is not None:  # runs are the loop's: the scheduler starts them, admin reviews them
        from distill_watchdog.loop.runs import RunManager

        daemon.runs = RunManager(daemon)
    return daemon


def _register_initial_student(daemon: Daemon) -> None:
    """`student.model` + `student.card` seed an empty registry (idempotent by content hash)."""
    cfg = daemon.settings.student
    if cfg.model is None or cfg.card is None or daemon.registry.active_version() is not None:
        return
    info = daemon.registry.register_files(cfg.model, cfg.card, actor="config")
    daemon.registry.record_activation(info.version, actor="config", reason="initial student from config")


def create_app(
    settings: Settings,
    components: Sequence[Component] | None = None,
    freeze_gc: bool = False,
    background_cpus: tuple[int, ...] | None = None,
) -> WatchdogASGI:
    """The daemon's ASGI app; `freeze_gc` for a process that runs nothing else (`serve`).

    `background_cpus`: what `background.pin_serving` returned in a pinned process; by default the
    settings' entries resolved against this process's CPUs (nothing is pinned here).
    """
    if background_cpus is None:
        background_cpus = background.resolve(settings.server)
    daemon = build_daemon(settings, components or (), background_cpus)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        daemon.batcher = MicroBatcher(
            daemon.models.get,
            settings.student.max_batch_size,
            settings.student.max_batch_delay_ms,
            settings.student.inline_below_us,
            requests_in_flight=lambda: wrapper.in_flight,
        )
        daemon.batcher.start()
        await asyncio.to_thread(_register_initial_student, daemon)
        await daemon.models.sync()
        poller = asyncio.get_running_loop().create_task(
            daemon.models.poll_forever(settings.store.poll_interval_s)
        )
        metrics.track(metrics.requests_in_flight, wrapper, lambda: wrapper.in_flight)
        for component in daemon.components:
            await component.start(daemon)
        published = (
            asyncio.get_running_loop().create_task(metrics.publish_forever())
            if metrics.MULTIPROCESS
            else None
        )
        if freeze_gc:
            # Everything built so far (modules, the model, the store, the components) lives as
            # long as the daemon: out of the collector's reach, a full collection scans only
            # what requests created since, instead of stopping the event loop for up to 80 ms,
            # which sampled rows (held for a batch) set off every few seconds (docs/sampling.md).
            gc.collect()
            gc.freeze()
        if settings.server.admin_token is None:
            log.warning("daemon: admin API disabled (server.admin_token is not set): /admin/* answers 401")
        log.info(
            "daemon: ready, serving %s", daemon.models.current.version if daemon.models.current else "nothing"
        )
        try:
            yield
        finally:
            daemon.draining = True
            poller.cancel()
            if published is not None:
                published.cancel()
            for component in reversed(daemon.components):
                try:
                    await component.stop()
                except Exception:
                    log.exception("daemon: a component failed to stop cleanly")
            await daemon.batcher.stop()
            metrics.untrack(metrics.requests_in_flight, wrapper)
            daemon.store.close()
            metrics.process_ended(os.getpid())

    framework = Starlette(
        routes=starlette_routes(),
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_error,
            BadRequest: _bad_request,
            WatchdogError: _watchdog_error,
        },
    )
    framework.state.daemon = daemon
    wrapper = WatchdogASGI(daemon, framework)
    return wrapper
