"""`distill-watchdog runs ...` and `teachers ...`: the admin API from the command line.

Each command is one admin API call to a running daemon (`--url`, default from the config's
`server.host`/`server.port`; token from `WATCHDOG_ADMIN_TOKEN` or `server.admin_token`).
Human tables by default, the daemon's JSON with `--json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer

from distill_watchdog.admin_client import URL_ENV, AdminClient, default_token, default_url
from distill_watchdog.cli_common import ConfigOpt, JsonOpt, emit, option_groups, table
from distill_watchdog.config import load_settings

runs_app = typer.Typer(no_args_is_help=True, help="Redistillation runs of a running daemon (admin API).")
teachers_app = typer.Typer(no_args_is_help=True, help="Teachers and their pinned versions (admin API).")

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", envvar=URL_ENV, help="the daemon (default: from the config's server section)"),
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="recorded in the audit trail")]


@dataclass(frozen=True)
class AdminOptions:
    """How every admin command reaches the daemon and shows its answer (cli_common.option_groups)."""

    url: UrlOpt = None
    config: ConfigOpt = None
    as_json: JsonOpt = False

    def client(self) -> AdminClient:
        settings = load_settings(self.config)
        return AdminClient(self.url or default_url(settings), default_token(settings))

    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        emit(data, self.as_json, human)


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else None


def _path(*parts: str) -> str:
    return "/admin/" + "/".join(quote(p, safe="") for p in parts)


# --- runs -------------------------------------------------------------------------------------


def _run_row(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": run["id"],
        "status": run["status"],
        "trigger": run["trigger"],
        "started": _when(run.get("created_at")),
        "parent": run.get("parent_version"),
        "candidate": run.get("candidate_version"),
        "reason": (run.get("reason") or "")[:60],
    }


@runs_app.command("list")
@option_groups
def runs_list(
    status: Annotated[str | None, typer.Option("--status", help="only runs in this state")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest N")] = 20,
    admin: AdminOptions = AdminOptions(),
) -> None:
    """Runs, newest first."""
    runs = admin.client().get("/admin/runs")["runs"]
    runs = [r for r in runs if status is None or r["status"] == status][:limit]
    cols = ["run", "status", "trigger", "started", "parent", "candidate", "reason"]
    admin.emit(runs, lambda runs: table([_run_row(r) for r in runs], cols, "no runs"))


def _describe(run: dict[str, Any], base: str) -> str:
    detail = run.get("detail") or {}
    build = detail.get("build") or {}
    stop = detail.get("stop") or {}
    lines = [
        f"run        {run['id']}",
        f"status     {run['status']}",
        f"trigger    {run['trigger']} ({(detail.get('actor') or '-')})",
        f"started    {_when(run.get('created_at'))} UTC",
        f"updated    {_when(run.get('updated_at'))} UTC",
        f"parent     {run.get('parent_version') or '-'}",
        f"candidate  {run.get('candidate_version') or '-'}",
        f"reason     {run.get('reason') or '-'}",
    ]
    source = {"card": "the parent's architecture (its card)", "default": "NOT the parent's: its card has no "
              "training.student (distill.job.student or the default; see the report)",
              "refused": "NOT the parent's: its card's factory is not allowed (distill.allowed_factories; "
              "see the report)"}  # fmt: skip
    if build.get("student_source") in source:
        lines.append(f"student    {source[build['student_source']]}")
    if stop:
        lines.append(f"stop rule  {stop.get('verdict')}")
    if run.get("gates_passed") is not None:
        failed = "; ".join(
            f"{g.get('gate')} {g.get('slice', '')}".strip() for g in run.get("failed_gates", [])
        )
        lines.append(f"gates      {'passed' if run['gates_passed'] else 'failed: ' + failed}")
    if run.get("error"):
        lines.append(f"error      {run['error']}")
    lines.append(f"report     {base}{run['report']}")
    return "\n".join(lines)


@runs_app.command("show")
@option_groups
def runs_show(
    run_id: Annotated[str, typer.Argument(help="run id")],
    admin: AdminOptions = AdminOptions(),
) -> None:
    """One run: state, why it started, gates, stop verdict, where its report is."""
    client = admin.client()
    run = client.get(_path("runs", run_id))
    admin.emit(run, lambda run: _describe(run, client.url))


@runs_app.command("trigger")
@option_groups
def runs_trigger(
    reason: ReasonOpt = "manual trigger",
    weak_slice: Annotated[
        list[str] | None,
        typer.Option(
            "--slice",
            help="weak slice to redistill on, e.g. sensor=c (repeatable; default: the last cycle's)",
        ),
    ] = None,
    admin: AdminOptions = AdminOptions(),
) -> None:
    """Start a redistillation run now (no policy checks)."""
    body: dict[str, Any] = {"reason": reason}
    if weak_slice:
        body["weak_slices"] = weak_slice
    run = admin.client().post("/admin/runs", body)
    admin.emit(run, lambda run: f"started run {run['id']} (parent {run.get('parent_version') or '-'})")


@runs_app.command("approve")
@option_groups
def runs_approve(
    run_id: Annotated[str, typer.Argument(help="run id of a candidate awaiting approval")],
    admin: AdminOptions = AdminOptions(),
) -> None:
    """Promote a run's candidate that awaits approval; every replica hot-swaps to it."""
    run = admin.client().post(_path("runs", run_id, "approve"))
    admin.emit(
        run,
        lambda run: f"promoted: run {run['id']}, student {run.get('candidate_version')} is active",
    )


@runs_app.command("reject")
@option_groups
def runs_reject(
    run_id: Annotated[str, typer.Argument(help="run id of a candidate awaiting approval")],
    reason: ReasonOpt = "",
    admin: AdminOptions = AdminOptions(),
) -> None:
    """Decline a run's candidate that awaits approval."""
    run = admin.client().post(_path("runs", run_id, "reject"), {"reason": reason})
    admin.emit(run, lambda run: f"declined: run {run['id']}")


# --- teachers -----------------------------------------------------------------------------------


def _teachers_table(data: dict[str, Any]) -> str:
    rows = [
        {
            "teacher": t["name"],
            "kind": t.get("kind"),
            "state": t.get("state"),
            "pinned": t.get("pinned_version"),
            "candidate": t.get("candidate_version"),
            "circuit": "open" if t.get("circuit_open") else "closed",
            "last_error": (t.get("last_error") or None) and str(t["last_error"])[:60],
        }
        for t in data["teachers"]
    ]
    cols = ["teacher", "kind", "state", "pinned", "candidate", "circuit", "last_error"]
    return f"{table(rows, cols)}\non a version change: {data.get('policy')}"


@teachers_app.command("list")
@option_groups
def teachers_list(admin: AdminOptions = AdminOptions()) -> None:
    """Teachers: pinned version, a new version awaiting acceptance, state, circuit."""
    admin.emit(admin.client().get("/admin/teachers"), _teachers_table)


@teachers_app.command("accept")
@option_groups
def teachers_accept(
    name: Annotated[str, typer.Argument(help="teacher name")],
    version: Annotated[
        str | None, typer.Option("--version", help="version to pin (default: the one awaiting acceptance)")
    ] = None,
    reason: ReasonOpt = "",
    admin: AdminOptions = AdminOptions(),
) -> None:
    """Pin a teacher's new version and release its quarantined rows (audited)."""
    body: dict[str, Any] = {"reason": reason}
    if version is not None:
        body["version"] = version
    state = admin.client().post(_path("teachers", name, "accept"), body)
    admin.emit(
        state,
        lambda state: (
            f"teacher {state['name']}: pinned {state.get('pinned_version')}, state {state.get('state')}"
        ),
    )
