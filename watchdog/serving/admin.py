"""The admin API (`/admin/*`): bearer token, constant-time compare, every change audited."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from distill_watchdog.serving.asgi import bounded, read_request
from distill_watchdog.serving.routes import JSON
from distill_watchdog.serving.schemas import AcceptTeacherRequest, ActivateRequest
from distill_watchdog.serving.validation import BadRequest

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon

Endpoint = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)


def check_token(daemon: Daemon, authorization: str | None) -> None:
    """Raises 401 unless `Authorization: Bearer <server.admin_token>` matches."""
    token = daemon.settings.server.admin_token
    if token is None:
        raise BadRequest(401, "admin API disabled: server.admin_token is not set")
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    expected = token.get_secret_value().encode()
    # An empty token never matches, whatever the configured one (the config refuses short ones).
    if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.encode(), expected):
        raise BadRequest(401, "admin: missing or wrong bearer token")


def admin(endpoint: Endpoint) -> Endpoint:
    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        check_token(request.app.state.daemon, request.headers.get("authorization"))
        return await endpoint(request)

    return guarded


def _daemon(request: Request) -> Daemon:
    return request.app.state.daemon


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON (`{}` when empty), read through the one bounded reader."""
    body = await read_request(request, limit)
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body: not valid JSON ({exc})") from None


async def read_model(request: Request, model: type[M], limit: int) -> M:
    """The body validated by `model` (an empty body is `{}`), or a 422 naming each faulty field."""
    data = await read_json(request, limit)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        faults = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(422, faults) from None


@admin
async def list_models(request: Request) -> Response:
    daemon = _daemon(request)
    infos = await asyncio.to_thread(daemon.registry.list)
    serving = daemon.models.current.version if daemon.models.current else None
    return JSON({"active": serving, "models": [i.as_dict() for i in infos]})


async def _upload_parts(request: Request, limit: int) -> tuple[bytes, Any, bool]:
    """ONNX bytes, card data and the activate flag, from multipart or JSON (base64 model)."""
    activate = request.query_params.get("activate", "false").lower() in ("1", "true", "yes")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        # The parser reads the body itself: through a receive that stops it at the limit.
        bounded_request = Request(request.scope, bounded(request.scope, request.receive, limit))
        form = await bounded_request.form(max_files=2, max_fields=4, max_part_size=limit)
        model, card = form.get("model"), form.get("card")
        if not isinstance(model, UploadFile):
            raise BadRequest(422, "model: required as a file part")
        model_bytes = await model.read()
        if card is None:
            raise BadRequest(422, "card: required (file or text part with the card JSON)")
        card_raw = await card.read() if isinstance(card, UploadFile) else card.encode()
        try:
            card_data = orjson.loads(card_raw)
        except orjson.JSONDecodeError:
            raise BadRequest(422, "card: not valid JSON") from None
        activate = activate or str(form.get("activate", "")).lower() in ("1", "true", "yes")
        return model_bytes, card_data, activate
    data = await read_json(request, limit)
    if not isinstance(data, dict) or not isinstance(data.get("model_base64"), str):
        raise BadRequest(422, "model_base64: required (or send multipart/form-data with 'model' and 'card')")
    try:
        model_bytes = base64.b64decode(data["model_base64"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(422, "model_base64: not valid base64") from None
    return model_bytes, data.get("card"), activate or bool(data.get("activate", False))


@admin
async def upload_model(request: Request) -> Response:
    daemon = _daemon(request)
    model_bytes, card_data, activate = await _upload_parts(request, daemon.settings.server.max_upload_bytes)
    info = await asyncio.to_thread(daemon.registry.register, model_bytes, card_data, "admin-api")
    if activate:
        await daemon.models.activate(info.version, actor="admin-api", reason="uploaded with activate")
        info = await asyncio.to_thread(daemon.registry.get, info.version)
    return JSON(info.as_dict(), status_code=201)


@admin
async def activate_model(request: Request) -> Response:
    daemon = _daemon(request)
    body = await read_model(request, ActivateRequest, daemon.settings.server.max_body_bytes)
    reason = (body.reason or "")[:500]
    model = await daemon.models.activate(request.path_params["version"], actor="admin-api", reason=reason)
    return JSON({"active": model.version})


@admin
async def rollback_model(request: Request) -> Response:
    daemon = _daemon(request)
    model = await daemon.models.rollback(actor="admin-api")
    return JSON({"active": model.version})


def _teachers(daemon: Daemon) -> Any:
    if daemon.teachers is None:
        raise BadRequest(404, "teachers: none configured (sampling is off)")
    return daemon.teachers


@admin
async def list_teachers(request: Request) -> Response:
    daemon = _daemon(request)
    service = _teachers(daemon)
    events = await asyncio.to_thread(daemon.store.teacher_events, None, 50)
    recent = [
        {
            "at": e.at,
            "teacher": e.teacher,
            "kind": e.kind,
            "from_version": e.from_version,
            "to_version": e.to_version,
            "detail": orjson.loads(e.detail_json),
        }
        for e in events
    ]
    policy = daemon.settings.sampling.on_teacher_change
    return JSON({"teachers": service.status(), "policy": policy, "events": recent})


@admin
async def accept_teacher(request: Request) -> Response:
    """Pins the teacher's candidate version (or `version`), releasing its quarantined rows; audited."""
    daemon = _daemon(request)
    service = _teachers(daemon)
    name = request.path_params["name"]
    if name not in service.states:
        raise BadRequest(404, f"teacher: unknown teacher {name[:64]!r}")
    body = await read_model(request, AcceptTeacherRequest, daemon.settings.server.max_body_bytes)
    state = await service.accept(name, body.version, actor="admin-api", reason=(body.reason or "")[:500])
    return JSON(state.as_dict())
