"""The two comparison servers of bench/serving.py, under the same uvicorn as the daemon.

python bench/serving_peers.py ceiling|naive PORT MODEL.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from pydantic import BaseModel


class PredictRequest(BaseModel):
    inputs: list[list[float]]


def ceiling_app(answer: bytes):
    """A bare ASGI app: reads the body, returns a fixed answer of the daemon's size."""

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


def naive_app(model_path: str):
    """FastAPI + pydantic body + one session.run per request: the usual first version."""
    from fastapi import FastAPI

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    api = FastAPI()

    @api.post("/v1/predict")
    def predict(request: PredictRequest) -> dict:
        logits = session.run(None, {"x": np.asarray(request.inputs, dtype=np.float32)})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        return {
            "model_version": "naive",
            "predictions": probs.argmax(1).tolist(),
            "probabilities": probs.tolist(),
        }

    @api.get("/")
    def root() -> dict:
        return {}

    return api


def main() -> None:
    kind, port, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if kind == "ceiling":
        answer = orjson.dumps(
            {"model_version": "0" * 16, "predictions": [3], "probabilities": [[0.1] * 10], "ids": ["0" * 32]}
        )
        app = ceiling_app(answer)
    else:
        app = naive_app(model)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
