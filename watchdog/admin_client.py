"""The admin API seen from the command line: one HTTP client, every failure one line.

The CLI's `runs` and `teachers` groups talk to a running daemon rather than to the store, so
they act where the daemon acts (the scheduler, the teacher pins it holds in memory) and go
through the same token check and audit trail as `curl` would.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import orjson

from distill_watchdog.config import Settings
from distill_watchdog.errors import WatchdogError

TOKEN_ENV = "WATCHDOG_ADMIN_TOKEN"
URL_ENV = "WATCHDOG_URL"


def default_url(settings: Settings) -> str:
    """The daemon's own address from its config; a wildcard bind is reached on loopback."""
    host = settings.server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


def default_token(settings: Settings) -> str | None:
    token = os.environ.get(TOKEN_ENV) or (
        settings.server.admin_token.get_secret_value() if settings.server.admin_token else None
    )
    return token or None


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 60.0) -> None:
        if not token:
            raise WatchdogError(f"no admin token: set {TOKEN_ENV} or server.admin_token in the config")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, body or {})

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        try:
            response = httpx.request(
                method, self.url + path, json=body, headers=self._headers, timeout=self.timeout_s
            )
        except httpx.ConnectError:
            raise WatchdogError(
                f"cannot reach the daemon at {self.url} (connection refused); is it running? (--url)"
            ) from None
        except httpx.TimeoutException:
            raise WatchdogError(f"no answer from {self.url}{path} within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise WatchdogError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from None
        try:
            data = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            data = None
        if response.status_code >= 400:
            said = data.get("error") if isinstance(data, dict) else None
            raise WatchdogError(f"{said or response.reason_phrase} (HTTP {response.status_code} from {path})")
        if data is None:
            raise WatchdogError(f"{self.url}{path}: the answer is not JSON (is --url a Distill Watchdog?)")
        return data
