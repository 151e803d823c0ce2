"""Runs the daemon under uvicorn: SIGTERM stops accepting, drains in-flight requests, then stops."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn

from distill_watchdog import metrics
from distill_watchdog.app import create_app
from distill_watchdog.background import pin_serving, split_cpus
from distill_watchdog.config import CONFIG_ENV, Settings, load_settings
from distill_watchdog.logs import setup_logging


def app_from_env() -> object:
    """Factory for uvicorn workers (server.workers > 1): each process reads the same config and
    pins itself (the supervisor that starts them is not pinned, so each resolves the same CPUs)."""
    settings = load_settings(os.environ.get(CONFIG_ENV))
    sys.setswitchinterval(settings.server.gil_switch_interval_ms / 1000)
    cpus = pin_serving(settings.server)
    setup_logging(settings.server.log_format)
    return create_app(settings, components=default_components(settings), freeze_gc=True, background_cpus=cpus)


def default_components(settings: Settings) -> list:
    """The background parts the daemon runs beside serving."""
    from distill_watchdog.alerts import Alerter
    from distill_watchdog.loop.scheduler import Scheduler
    from distill_watchdog.shadow import SamplingService

    components: list = [Alerter(settings.alerts)]
    if settings.teachers:
        components.append(SamplingService(settings))
    components.append(Scheduler())
    return components


def serve(settings: Settings, config_path: str | None = None) -> None:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    sys.setswitchinterval(settings.server.gil_switch_interval_ms / 1000)
    split_cpus(settings.server.background_cpus)  # unusable CPUs stop the daemon here, with one line
    setup_logging(settings.server.log_format)
    common = dict(
        host=settings.server.host,
        port=settings.server.port,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=int(settings.server.drain_timeout_s),
        log_config=None,
        loop="uvloop",
        http="httptools",
        backlog=4096,
    )
    if settings.server.workers > 1:
        if config_path:
            os.environ[CONFIG_ENV] = str(config_path)
        # One folder per daemon for every process's metrics, so one scrape counts them all.
        metrics.prepare_folder(Path(settings.data_dir) / "metrics")
        uvicorn.run(
            "distill_watchdog.server:app_from_env", factory=True, workers=settings.server.workers, **common
        )
        return
    cpus = pin_serving(settings.server)  # before the model loads: its thread count follows
    app = create_app(settings, components=default_components(settings), freeze_gc=True, background_cpus=cpus)
    uvicorn.Server(uvicorn.Config(app, **common)).run()
