"""Handlers of the review UI. Reads go through the store in threads; writes need the admin token."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse

from distill_watchdog.loop.reports.render import ENV, TEMPLATES, run_context
from distill_watchdog.loop.runs import RunError
from distill_watchdog.serving.admin import check_token
from distill_watchdog.serving.asgi import read_request
from distill_watchdog.serving.validation import BadRequest
from distill_watchdog.ui import charts

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon


def _style_hash() -> str:
    """The CSP source of the pages' one inline style block (base.html; no template code in it)."""
    text = (TEMPLATES / "base.html").read_text()
    style = text[text.index("<style>") + len("<style>") : text.index("</style>")]
    return "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"


# The pages run no script and load nothing; reports draw their SVG inline, styled by attributes.
PAGE_CSP = (
    f"default-src 'none'; style-src {_style_hash()}; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Evidently's drift page runs its own inline scripts: in a sandbox, as an origin of its own.
DRIFT_CSP = "sandbox allow-scripts; frame-ancestors 'none'"


def _secured(response: Response, csp: str = PAGE_CSP) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _page(name: str, **ctx: Any) -> Response:
    return _secured(HTMLResponse(ENV.get_template(name).render(standalone=False, **ctx)))


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
    return _page("run.html", **ctx)


async def run_file(request: Request) -> Response:
    """The run's Evidently drift page or report.json, from the run folder only."""
    file = request.path_params["file"]
    if file not in ("drift", "report.json"):
        raise BadRequest(404, "not found")
    ctx = await _ctx(request)
    path = ctx["drift_page"] if file == "drift" else Path(ctx["run"].run_dir) / file
    if path is None or not path.exists():
        raise BadRequest(404, f"run {ctx['run'].id}: no {'drift page' if file == 'drift' else file}")
    csp = DRIFT_CSP if file == "drift" else PAGE_CSP
    if path.suffix != ".gz":
        return _secured(FileResponse(path), csp)
    vary = {"Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        gzipped = {"Content-Encoding": "gzip", **vary}
        return _secured(FileResponse(path, media_type=HTML, headers=gzipped), csp)
    return _secured(StreamingResponse(_gunzip(path), media_type=HTML, headers=vary), csp)


HTML = "text/html; charset=utf-8"


def _gunzip(path: Path) -> Iterator[bytes]:
    """The page decompressed in chunks, for the rare client that does not accept gzip."""
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            yield chunk


def _same_origin(request: Request) -> bool:
    """A browser posts the form with `Origin` (or at least `Referer`): it must be this daemon.
    Clients that send neither are not browsers another site could drive; the token decides."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    parsed = urlsplit(source)
    return parsed.scheme in ("http", "https") and parsed.netloc == request.headers.get("host", "")


async def _authorized_form(request: Request) -> dict[str, str]:
    """The fields of a UI form that changes something: posted from this daemon's pages, read
    within the body limit before anything else, carrying the admin token."""
    daemon: Daemon = request.app.state.daemon
    if not _same_origin(request):
        raise BadRequest(403, "origin: the form must be posted from this daemon's own pages")
    body = await read_request(request, daemon.max_body_bytes)
    form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
    check_token(daemon, f"Bearer {form.get('token', '')}")
    return form


async def review(request: Request) -> Response:
    """Approve or reject a run's candidate; the outcome shows on the run's page, from its state."""
    daemon: Daemon = request.app.state.daemon
    run_id = request.path_params["id"][:64]
    action = request.path_params["action"]
    if action not in ("approve", "reject"):
        raise BadRequest(404, "not found")
    form = await _authorized_form(request)
    if daemon.runs is None:
        raise BadRequest(409, "runs: the scheduler is not running in this daemon")
    try:
        if action == "approve":
            await daemon.runs.approve(run_id, actor="ui")
        else:
            await daemon.runs.reject(run_id, actor="ui", reason=form.get("reason", "")[:500])
    except RunError as exc:
        raise BadRequest(409, str(exc)) from None
    return RedirectResponse(f"/ui/runs/{quote(run_id)}", status_code=303)


async def accept_teacher(request: Request) -> Response:
    """Accept a teacher's candidate version (as `POST /admin/teachers/{name}/accept`); the
    dashboard then shows the new pin."""
    daemon: Daemon = request.app.state.daemon
    name = request.path_params["name"][:64]
    form = await _authorized_form(request)
    if daemon.teachers is None or name not in daemon.teachers.states:
        raise BadRequest(404, f"teacher: unknown teacher {name!r}")
    await daemon.teachers.accept(name, None, actor="ui", reason=form.get("reason", "")[:500])
    return RedirectResponse("/ui/", status_code=303)
