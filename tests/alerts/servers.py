"""A real Alertmanager and a JSON webhook receiver on loopback, for the alert suites."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from support import eventually, free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Alertmanager:
    """`prometheus-alertmanager` on a loopback port; `config` replaces the one-receiver default."""

    def __init__(self, folder: Path, config: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = folder / "alertmanager.yml"
        config = config or {
            "route": {"receiver": "blackhole", "group_wait": "1s"},
            "receivers": [{"name": "blackhole"}],
        }
        config_path.write_text(yaml.safe_dump(config))
        self.log = open(folder / "alertmanager.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(ALERTMANAGER),
                f"--config.file={config_path}",
                f"--storage.path={folder / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(self._ready, timeout=20, what="alertmanager ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self, name: str, state: str = "active") -> list[dict[str, Any]]:
        """Alerts of that name in `state` (active, suppressed: silenced or inhibited)."""
        found = httpx.get(
            f"{self.url}/api/v2/alerts", params={"filter": f'alertname="{name}"', "inhibited": "true"}
        ).json()
        return [a for a in found if a["status"]["state"] == state]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


class Webhook:
    """A JSON receiver that fails the first `failures` posts with HTTP 500; `paths` records which
    URL path each accepted body came to (one path per Alertmanager receiver)."""

    def __init__(self, failures: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.failures = failures
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status = 500 if owner.failures > 0 else 200
                if owner.failures > 0:
                    owner.failures -= 1
                else:
                    owner.received.append(body)
                    owner.paths.append(self.path)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def at(self, path: str) -> list[dict[str, Any]]:
        """Bodies received at `path`."""
        return [b for p, b in zip(self.paths, self.received, strict=True) if p == path]
