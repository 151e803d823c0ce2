"""A real Open Inference Protocol v2 teacher on loopback, steerable from the tests.

It answers `POST /v2/models/{name}/infer` with softmax probabilities of the first C
features (times `scale`, classes rolled by `shift`), reports `model_version`, and can
change version, slow down (`delay_s`), answer garbage or HTTP 500 (`mode`), or die (`stop`)
and come back on the same port (`start`). `POST /control` sets the same knobs over HTTP,
so the benchmark can run it as a child process:
`python tests/teachers/fake_teacher.py --port 9000 --delay 0.2`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from typing import Any

import numpy as np
import orjson
import uvicorn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeTeacher:
    def __init__(
        self, port: int | None = None, version: str = "v1", num_classes: int = 10, delay_s: float = 0.0
    ) -> None:
        self.port = port or _free_port()
        self.version = version
        self.num_classes = num_classes
        self.delay_s = delay_s
        self.mode = "ok"  # ok | garbage | error | nonjson
        self.scale = 1.0
        self.shift = 0
        self.calls = 0
        self.rows = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def probs(self, x: np.ndarray) -> np.ndarray:
        z = np.roll(x[:, : self.num_classes] * self.scale, self.shift, axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":  # health
            await self._answer(send, 200, b"{}")
            return
        if scope["path"] == "/control":
            for key, value in orjson.loads(body).items():
                setattr(self, key, value)
            await self._answer(send, 200, b"{}")
            return
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.mode == "error":
            await self._answer(send, 500, b'{"error": "teacher on fire"}')
            return
        if self.mode == "nonjson":
            await self._answer(send, 200, b"<html>not json</html>")
            return
        request = orjson.loads(body)
        tensor = request["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        self.rows += len(x)
        probs = self.probs(x)
        data: Any = probs.ravel().tolist() if self.mode != "garbage" else ["not", "numbers"]
        answer = {
            "model_name": scope["path"].split("/")[3],
            "model_version": self.version,
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape), "data": data}
            ],
        }
        await self._answer(send, 200, orjson.dumps(answer))

    async def _answer(self, send: Any, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def start(self) -> FakeTeacher:
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake teacher did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Dies: the port refuses connections until `start` again."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> FakeTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--version", default="v1")
    args = parser.parse_args()
    teacher = FakeTeacher(args.port, args.version, delay_s=args.delay)
    uvicorn.run(teacher, host="127.0.0.1", port=args.port, log_config=None, access_log=False, lifespan="on")
