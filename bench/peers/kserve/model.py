"""A KServe custom model wrapping ONNX Runtime, as the KServe docs show (`kserve.Model` + `ModelServer`).

    venv/bin/python model.py --model_name mlp --model_path mlp.onnx --http_port 8080 --grpc_port 8081

Answers the v1 protocol: `POST /v1/models/mlp:predict` with `{"instances": [[f, ...], ...]}`.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import onnxruntime as ort
from kserve import Model, ModelServer, model_server


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True
        return self.ready

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        assert self.session is not None
        x = np.asarray(payload["instances"], dtype=np.float32)
        logits = self.session.run(None, {self.input_name: x})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        return {"predictions": probs.tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxModel(args.model_name, args.model_path)])
