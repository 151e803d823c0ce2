"""The OpenAPI 3 document, built from the route table (endpoints.py) and the body models (schemas.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from distill_watchdog import __version__
from distill_watchdog.serving.endpoints import ENDPOINTS, Endpoint
from distill_watchdog.serving.schemas import MODELS, SLICE_SCHEMA, ErrorBody

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else _ref(model)
    return {"content": {"application/json": {"schema": schema}}}


def operation(e: Endpoint) -> dict[str, Any]:
    """The document's entry for one endpoint."""
    ok: dict[str, Any] = {"description": "ok"}
    if e.ok_media != "application/json":
        ok["content"] = {e.ok_media: {}}
    elif e.ok is not None:
        ok.update(_json(e.ok))
    op: dict[str, Any] = {"summary": e.summary, "responses": {str(e.ok_code): ok}}
    if e.body is not None:
        op["requestBody"] = {"required": e.body_required, **_json(e.body)}
    errors = (*e.errors, 401) if e.admin else e.errors
    if e.admin:
        op["security"] = [{"bearer": []}]
    op["responses"].update({str(c): {"description": "error", **_json(ErrorBody)} for c in errors})
    parameters = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in e.params]
    parameters += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in e.query.items()]
    if parameters:
        op["parameters"] = parameters
    return op


def paths() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        if e.summary:
            out.setdefault(e.path, {})[e.method.lower()] = operation(e)
    return out


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # every nested model is listed in components itself
    return schema


def schemas() -> dict[str, Any]:
    """Every body model's schema, with what pydantic cannot say (slice label syntax, unique ids)."""
    out = {m.__name__: _schema(m) for m in MODELS}
    predict = out["PredictRequest"]["properties"]
    predict["slice"]["anyOf"][0] = SLICE_SCHEMA
    predict["ids"]["anyOf"][0]["uniqueItems"] = True
    return out


def document(daemon: Daemon | None = None) -> dict[str, Any]:
    components = schemas()
    if daemon is not None:
        _served_shape(components, daemon)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Distill Watchdog", "version": __version__},
        "paths": paths(),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _served_shape(schemas: dict[str, Any], daemon: Daemon) -> None:
    """The running daemon's limits and the active student's width and classes, in the bodies."""
    inputs = schemas["PredictRequest"]["properties"]["inputs"]
    inputs["maxItems"] = daemon.settings.server.max_rows_per_request
    schemas["FeedbackRequest"]["properties"]["labels"]["maxItems"] = (
        daemon.settings.server.max_feedback_labels
    )
    model = daemon.models.current
    if model is not None:
        width = model.card.num_features
        inputs["items"].update(minItems=width, maxItems=width)
        schemas["FeedbackLabel"]["properties"]["label"]["maximum"] = model.card.num_classes - 1
