"""Raw ASGI helpers for the hot routes: bounded body reads and JSON answers without framework cost."""

from __future__ import annotations

from typing import Any

import orjson

from distill_watchdog.serving.validation import BadRequest

Scope = dict[str, Any]
JSON_HEADERS = [(b"content-type", b"application/json")]
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def whole_body(message: dict[str, Any], limit: int) -> bytes | None:
    """The body when this first message holds all of it (the usual case), None when more comes;
    BadRequest(413) beyond `limit`. Not a coroutine: the hot route calls it inline."""
    if message["type"] != "http.request" or message.get("more_body", False):
        return None
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise BadRequest(413, f"body: {len(body)} bytes exceeds the limit of {limit}")
    return body


async def read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    """The whole body, or BadRequest(413) as soon as it is known to exceed `limit`.

    The one body reader of every route (the hot routes inline its first step, `whole_body`):
    declared lengths are refused before anything is read, chunks are joined once (linear time).
    """
    message = await receive()
    body = whole_body(message, limit)
    return body if body is not None else await read_rest(scope, receive, message, limit)


async def read_request(request: Any, limit: int) -> bytes:
    """`read_body` for a Starlette request (whose body nothing else has read)."""
    return await read_body(request.scope, request.receive, limit)


def refuse_declared(scope: Scope, limit: int) -> None:
    """BadRequest(413) when the request declares a body longer than `limit`."""
    declared = header(scope, b"content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise BadRequest(400, "Content-Length: not a number") from None
    if length > limit:
        raise BadRequest(413, f"body: {length} bytes exceeds the limit of {limit}")


def bounded(scope: Scope, receive: Any, limit: int) -> Any:
    """`receive` for a parser that reads the body itself (multipart): refuses a declared length
    beyond `limit` at once, and a streamed body as soon as it passes it."""
    refuse_declared(scope, limit)
    seen = 0

    async def receive_bounded() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BadRequest(413, f"body: exceeds the limit of {limit} bytes")
        return message

    return receive_bounded


async def read_rest(scope: Scope, receive: Any, message: dict[str, Any], limit: int) -> bytes:
    """The body of a request whose first message (`message`) did not hold all of it."""
    refuse_declared(scope, limit)  # more to come: refuse before reading it
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client went away")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"body: exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks)


def response_start(
    status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS
) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }


async def send_bytes(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(response_start(status, body, headers))
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Any, status: int, payload: Any) -> None:
    """`send_bytes` inlined: one coroutine frame less on every answer of the hot routes."""
    body = orjson.dumps(payload, option=_JSON_OPTS)
    await send(response_start(status, body))
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, status: int, message: str) -> None:
    await send_json(send, status, {"error": message})
