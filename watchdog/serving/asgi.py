"""Raw ASGI helpers for the hot routes: bounded body reads and JSON answers without framework cost."""

from __future__ import annotations

from typing import Any

import orjson

from .validation import BadRequest

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
    """The whole body, or BadRequest(413) as soon as it is known to exceed `limit`."""
    message = await receive()
    body = whole_body(message, limit)
    return body if body is not None else await read_rest(scope, receive, message, limit)


async def read_rest(scope: Scope, receive: Any, message: dict[str, Any], limit: int) -> bytes:
    """The body of a request whose first message (`message`) did not hold all of it."""
    declared = header(scope, b"content-length")  # more to come: refuse before reading it
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BadRequest(413, f"body: {int(declared)} bytes exceeds the limit of {limit}")
        except ValueError:
            raise BadRequest(400, "Content-Length: not a number") from None
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
