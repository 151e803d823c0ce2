"""An MLServer custom runtime wrapping ONNX Runtime, as the MLServer docs show (`MLModel` + codecs).

`model-settings.json` names it (`"implementation": "runtime.OnnxRuntime"`) and gives the ONNX
file as `parameters.uri`; `mlserver start FOLDER` serves it on the Open Inference Protocol v2:
`POST /v2/models/mlp/infer`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        self._session = ort.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        logits = self._session.run(None, {self._input: x})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name="probabilities", payload=probs)],
        )
