"""Every HTTP route in one table: the dispatcher, the metric labels and the OpenAPI document read it.

An `Endpoint` names its handler and what the document says about it. The two hot routes
(`/v1/predict`, OIP infer) are raw ASGI handlers that the dispatcher (app.WatchdogASGI) calls
itself; every other handler is a Starlette route built from this table, in its order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.responses import RedirectResponse
from starlette.routing import Route

from distill_watchdog.loop import api as runs_api
from distill_watchdog.serving import admin, routes
from distill_watchdog.serving.schemas import (
    AcceptTeacherRequest,
    ActivateRequest,
    FeedbackRequest,
    FeedbackResponse,
    InferRequest,
    InferResponse,
    PredictRequest,
    PredictResponse,
    RejectRunRequest,
    TriggerRunRequest,
    UploadRequest,
)
from distill_watchdog.ui import charts, pages

OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # a Starlette template: `{name}` parameters
    handler: Callable[..., Any]
    summary: str = ""  # empty: not in the OpenAPI document
    ok: type[BaseModel] | dict[str, Any] | None = None  # the success body's schema
    body: type[BaseModel] | None = None
    body_required: bool = True
    errors: tuple[int, ...] = ()
    admin: bool = False  # bearer token; 401 is added to the errors
    ok_code: int = 200
    ok_media: str = "application/json"
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> schema (optional params)
    raw: bool = False  # a raw ASGI handler, dispatched by app.WatchdogASGI
    label: str = ""  # the `route` label of the request metrics; the path when empty

    @property
    def route_label(self) -> str:
        return self.label or self.path

    @property
    def params(self) -> list[str]:
        return [p.split(":")[0] for p in re.findall(r"{([^}]+)}", self.path)]


def _redirect_to_dashboard(request: Any) -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


E = Endpoint
# fmt: off
ENDPOINTS: tuple[Endpoint, ...] = (
    E("POST", "/v1/predict", routes.predict, "Predict with the active student", PredictResponse,
      PredictRequest, errors=(400, 413, 422, 503), raw=True),
    E("POST", "/v2/models/{name}/infer", routes.infer, "OIP v2 inference (JSON or binary tensor extension)",
      InferResponse, InferRequest, errors=(400, 404, 413, 422, 503), raw=True),
    E("POST", "/v2/models/{name}/versions/{version}/infer", routes.infer, raw=True),
    E("GET", "/v2", routes.server_metadata, "OIP v2 server metadata", OBJECT),
    E("GET", "/v2/health/live", routes.live, "OIP v2 liveness", OBJECT),
    E("GET", "/v2/health/ready", routes.ready, "OIP v2 readiness", OBJECT, errors=(503,)),
    E("GET", "/v2/models/{name}", routes.model_metadata, "OIP v2 model metadata", OBJECT, errors=(404, 503)),
    E("GET", "/v2/models/{name}/ready", routes.model_ready, "OIP v2 model readiness", OBJECT,
      errors=(404, 503)),
    E("GET", "/metrics", routes.metrics_endpoint, "Prometheus text exposition", ok_media="text/plain"),
    E("GET", "/openapi.json", routes.openapi, "This document", OBJECT),
    E("POST", "/v1/feedback", routes.feedback, "Join delayed true labels to sampled rows by id",
      FeedbackResponse, FeedbackRequest, errors=(400, 413, 422, 503)),
    E("GET", "/admin/teachers", admin.list_teachers,
      "Teachers: pins, candidates, circuit state, recent events", OBJECT, errors=(404,), admin=True),
    E("POST", "/admin/teachers/{name}/accept", admin.accept_teacher,
      "Accept a teacher version (pins it, releases its quarantined rows; audited)", OBJECT,
      AcceptTeacherRequest, body_required=False, errors=(404, 409, 422), admin=True),
    E("GET", "/admin/models", admin.list_models, "List student versions", OBJECT, admin=True),
    E("POST", "/admin/models", admin.upload_model, "Upload a student (multipart 'model' + 'card', or JSON)",
      OBJECT, UploadRequest, errors=(400, 413, 422), admin=True, ok_code=201),
    E("POST", "/admin/models/rollback", admin.rollback_model, "Return to the previous active version", OBJECT,
      errors=(409,), admin=True),
    E("POST", "/admin/models/{version}/activate", admin.activate_model,
      "Activate a version (load, warm, swap)", OBJECT, ActivateRequest, body_required=False,
      errors=(400, 404, 413, 422), admin=True),
    E("GET", "/admin/runs", runs_api.list_runs, "Redistillation runs, newest first", OBJECT, admin=True),
    E("POST", "/admin/runs", runs_api.trigger_run, "Start a redistillation run now", OBJECT,
      TriggerRunRequest, body_required=False, errors=(400, 409, 413, 422), admin=True, ok_code=202),
    E("GET", "/admin/runs/{id}", runs_api.get_run, "One run with its detail", OBJECT, errors=(404,),
      admin=True),
    E("POST", "/admin/runs/{id}/approve", runs_api.approve_run, "Promote a run's candidate awaiting approval",
      OBJECT, errors=(404, 409), admin=True, label="/admin/runs/{id}/{action}"),
    E("POST", "/admin/runs/{id}/reject", runs_api.reject_run, "Decline a run's candidate", OBJECT,
      RejectRunRequest, body_required=False, errors=(400, 404, 409, 413, 422), admin=True,
      label="/admin/runs/{id}/{action}"),
    E("GET", "/ui", _redirect_to_dashboard, label="/ui"),
    E("GET", "/ui/", pages.dashboard, "Review UI (server-rendered HTML); `range`: the curves' time range",
      errors=(400,), query={"range": {"enum": list(charts.RANGES)}}, label="/ui"),
    E("GET", "/ui/runs", pages.runs_page, label="/ui"),
    E("GET", "/ui/runs/{id}", pages.run_page, label="/ui"),
    E("GET", "/ui/runs/{id}/{file:str}", pages.run_file, label="/ui"),
    E("POST", "/ui/runs/{id}/{action:str}", pages.review, label="/ui"),
    E("POST", "/ui/teachers/{name}/accept", pages.accept_teacher, label="/ui"),
)
# fmt: on
# Paths under a prefix that no endpoint matches still count under the prefix's label.
LABEL_PREFIXES = {"/ui/": "/ui"}


def starlette_routes() -> list[Route]:
    return [Route(e.path, e.handler, methods=[e.method]) for e in ENDPOINTS if not e.raw]


def _pattern(path: str) -> re.Pattern[str]:
    """`/admin/runs/{id}` -> `^/admin/runs/[^/]+$`."""
    parts = re.split(r"{[^}]+}", path)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")


_EXACT = {e.path: e.route_label for e in ENDPOINTS if "{" not in e.path}
_PATTERNS = [(_pattern(e.path), e.route_label) for e in ENDPOINTS if "{" in e.path]


def route_label(path: str) -> str:
    """The route template a request path belongs to (a bounded label), or "other"."""
    label = _EXACT.get(path)
    if label is not None:
        return label
    for pattern, label in _PATTERNS:
        if pattern.match(path):
            return label
    for prefix, label in LABEL_PREFIXES.items():
        if path.startswith(prefix):
            return label
    return "other"
