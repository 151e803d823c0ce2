"""Admin API for runs: list, show, trigger, approve, reject (bearer token; every change audited)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from distill_watchdog.loop.runs import RunError
from distill_watchdog.serving.admin import admin, read_model
from distill_watchdog.serving.routes import JSON
from distill_watchdog.serving.schemas import RejectRunRequest, TriggerRunRequest
from distill_watchdog.serving.validation import BadRequest

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon
    from distill_watchdog.store.tables import DistillRun


def run_dict(row: DistillRun) -> dict[str, Any]:
    detail = orjson.loads(row.detail_json)
    return {
        "id": row.id,
        "status": row.status,
        "trigger": row.trigger,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "parent_version": row.parent_version,
        "candidate_version": row.candidate_version,
        "reason": detail.get("reason", ""),
        "error": detail.get("error"),
        "stop_verdict": (detail.get("stop") or {}).get("verdict"),
        "gates_passed": detail.get("gates_passed"),
        "failed_gates": detail.get("failed_gates", []),
        "report": f"/ui/runs/{row.id}",
        "report_json": f"/ui/runs/{row.id}/report.json",
    }


def _runs(daemon: Daemon) -> Any:
    if daemon.runs is None:
        raise BadRequest(409, "runs: the scheduler is not running in this daemon")
    return daemon.runs


async def _get(daemon: Daemon, run_id: str) -> DistillRun:
    row = await asyncio.to_thread(daemon.store.get_run, run_id[:64])
    if row is None:
        raise BadRequest(404, f"run: no run {run_id[:64]!r}")
    return row


@admin
async def list_runs(request: Request) -> Response:
    daemon: Daemon = request.app.state.daemon
    rows = await asyncio.to_thread(daemon.store.list_runs, 100)
    return JSON({"runs": [run_dict(r) for r in rows]})


@admin
async def get_run(request: Request) -> Response:
    daemon: Daemon = request.app.state.daemon
    row = await _get(daemon, request.path_params["id"])
    return JSON({**run_dict(row), "detail": orjson.loads(row.detail_json)})


@admin
async def trigger_run(request: Request) -> Response:
    """Starts a run now (no policy checks), on this replica; weak slices from the body or the last cycle."""
    daemon: Daemon = request.app.state.daemon
    runs = _runs(daemon)
    body = await read_model(request, TriggerRunRequest, daemon.settings.server.max_body_bytes)
    reason, weak = (body.reason or "manual trigger")[:500], body.weak_slices
    running = [r for r in await asyncio.to_thread(daemon.store.list_runs, 20) if r.status == "running"]
    if running:  # one training child at a time: a flood of triggers must not fork a process each
        raise BadRequest(409, f"run {running[0].id} is still running; wait for it or reject it")
    last = daemon.scheduler.last_cycle if daemon.scheduler is not None else None
    numbers: dict[str, Any] = {}
    if weak is not None:
        numbers["weak_slices"] = [{"slice": s[:200]} for s in weak]
    elif last and last.get("outcome") == "ok":
        numbers["weak_slices"] = last.get("weak_slices", [])
    row = await runs.trigger("manual", reason, numbers, (last or {}).get("drift"), actor="admin-api")
    return JSON(run_dict(row), status_code=202)


@admin
async def approve_run(request: Request) -> Response:
    daemon: Daemon = request.app.state.daemon
    row = await _get(daemon, request.path_params["id"])
    try:
        row = await _runs(daemon).approve(row.id, actor="admin-api")
    except RunError as exc:
        raise BadRequest(409, str(exc)) from None
    return JSON(run_dict(row))


@admin
async def reject_run(request: Request) -> Response:
    daemon: Daemon = request.app.state.daemon
    row = await _get(daemon, request.path_params["id"])
    body = await read_model(request, RejectRunRequest, daemon.settings.server.max_body_bytes)
    try:
        row = await _runs(daemon).reject(row.id, actor="admin-api", reason=(body.reason or "")[:500])
    except RunError as exc:
        raise BadRequest(409, str(exc)) from None
    return JSON(run_dict(row))
