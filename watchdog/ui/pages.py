"""Handlers of the review UI. Reads go through the store in threads; writes need the admin token."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..jobs.runs import RunError
from ..reports.render import ENV, run_context
from ..serving.admin import check_token
from ..serving.validation import BadRequest
from . import charts

if TYPE_CHECKING:
    from ..app import Daemon


def _page(name: str, **ctx: Any) -> HTMLResponse:
    return HTMLResponse(ENV.get_template(name).render(standalone=False, **ctx))


def _charts(daemon: Daemon, range_key: str) -> dict[str, Any]:
    """The curves of the time range, from the stored cycles and runs (blocking: store reads)."""
    since = time.time() - charts.RANGES[range_key]
    cycles = daemon.store.cycles_between(since, max_rows=charts.MAX_CYCLES)
    runs = daemon.store.runs_between(since)
    history = daemon.store.activation_history()
    settings = daemon.settings
    return charts.dashboard_charts(
        cycles, runs, history, settings.policy, settings.monitor.top_slices, range_key
    )


def _dashboard_data(daemon: Daemon, range_key: str) -> dict[str, Any]:
    store = daemon.store
    cycles = store.recent_cycles(1)
    cycle = orjson.loads(cycles[0].summary_json) if cycles else None
    if cycle is not None:
        cycle["at"] = cycles[0].at
    decisions = store.recent_decisions(10)
    return {
        "cycle": cycle,
        "decisions": [{"at": d.at, "action": d.action, "reason": d.reason} for d in decisions],
        "runs": store.list_runs(5),
        "events": store.audit_events(15),
        "charts": _charts(daemon, range_key),
    }


async def dashboard(request: Request) -> Response:
    daemon: Daemon = request.app.state.daemon
    range_key = request.query_params.get("range", charts.DEFAULT_RANGE)
    if range_key not in charts.RANGES:
        raise BadRequest(400, f"range: must be one of {', '.join(charts.RANGES)}")
    data = await asyncio.to_thread(_dashboard_data, daemon, range_key)
    teachers = daemon.teachers.status() if daemon.teachers is not None else []
    alerts = []
    if daemon.alerts is not None:
        alerts = [
            {
                "name": a.labels.get("alertname"),
                "labels": {k: v for k, v in a.labels.items() if k not in ("alertname", "service")},
                "summary": a.annotations.get("summary", ""),
                "since": a.starts_at,
            }
            for a in daemon.alerts.active.values()
        ]
    scheduler = daemon.scheduler
    return _page(
        "dashboard.html",
        active=daemon.models.current.version if daemon.models.current else None,
        card=daemon.models.current.card if daemon.models.current else None,
        teachers=teachers,
        alerts=alerts,
        leader=bool(scheduler and scheduler.is_leader),
        **data,
    )


async def runs_page(request: Request) -> Response:
    daemon: Daemon = request.app.state.daemon
    rows = await asyncio.to_thread(daemon.store.list_runs, 100)
    return _page("runs.html", runs=rows)


async def _ctx(request: Request) -> dict[str, Any]:
    daemon: Daemon = request.app.state.daemon
    run_id = request.path_params["id"][:64]
    ctx = await asyncio.to_thread(run_context, daemon.store, run_id)
    if ctx is None:
        raise BadRequest(404, f"run: no run {run_id!r}")
    return ctx


async def run_page(request: Request) -> Response:
    ctx = await _ctx(request)
    return _page("run.html", message=request.query_params.get("message", "")[:300], **ctx)


async def run_file(request: Request) -> Response:
    """The run's Evidently drift page or report.json, from the run folder only."""
    file = request.path_params["file"]
    if file not in ("drift", "report.json"):
        raise BadRequest(404, "not found")
    ctx = await _ctx(request)
    path = ctx["drift_page"] if file == "drift" else Path(ctx["run"].run_dir) / file
    if path is None or not path.exists():
        raise BadRequest(404, f"run {ctx['run'].id}: no {'drift page' if file == 'drift' else file}")
    if path.suffix != ".gz":
        return FileResponse(path)
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        return FileResponse(
            path, media_type=HTML, headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        )
    return StreamingResponse(_gunzip(path), media_type=HTML, headers={"Vary": "Accept-Encoding"})


HTML = "text/html; charset=utf-8"


def _gunzip(path: Path) -> Iterator[bytes]:
    """The page decompressed in chunks, for the rare client that does not accept gzip."""
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            yield chunk


async def review(request: Request) -> Response:
    """Approve or reject from a form; the admin token is a form field."""
    daemon: Daemon = request.app.state.daemon
    run_id = request.path_params["id"][:64]
    action = request.path_params["action"]
    if action not in ("approve", "reject"):
        raise BadRequest(404, "not found")
    body = (await request.body())[:20_000].decode(errors="replace")
    form = {k: v[0] for k, v in parse_qs(body).items()}
    check_token(daemon, f"Bearer {form.get('token', '')}")
    if daemon.runs is None:
        raise BadRequest(409, "runs: the scheduler is not running in this daemon")
    try:
        if action == "approve":
            await daemon.runs.approve(run_id, actor="ui")
            message = "approved: the candidate is now active"
        else:
            await daemon.runs.reject(run_id, actor="ui", reason=form.get("reason", "")[:500])
            message = "declined"
    except RunError as exc:
        message = str(exc)
    from urllib.parse import quote

    return RedirectResponse(f"/ui/runs/{run_id}?message={quote(message)}", status_code=303)


ROUTES = [
    Route("/ui", lambda request: RedirectResponse("/ui/", status_code=307), methods=["GET"]),
    Route("/ui/", dashboard, methods=["GET"]),
    Route("/ui/runs", runs_page, methods=["GET"]),
    Route("/ui/runs/{id}", run_page, methods=["GET"]),
    Route("/ui/runs/{id}/{file:str}", run_file, methods=["GET"]),
    Route("/ui/runs/{id}/{action:str}", review, methods=["POST"]),
]
