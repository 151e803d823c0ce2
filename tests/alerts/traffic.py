"""Traffic that makes chosen slices weak: rows on which the test student and the fake teacher
agree, or disagree, picked with the numpy reference of the same ONNX graph."""

from __future__ import annotations

import httpx
import numpy as np

from support import mlp_reference, mlp_weights


class SliceTraffic:
    """Rows for `support.write_model(seed=0)` (40 features, 10 classes) and `FakeTeacher(shift=0)`."""

    def __init__(self, pool: int = 40_000, seed: int = 7) -> None:
        x = np.random.default_rng(seed).normal(size=(pool, 40)).astype(np.float32)
        logits = mlp_reference(x.astype(np.float64), mlp_weights(40, 10, seed=0))
        top2 = np.sort(logits, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 0.05  # no near-ties between float32 ONNX and numpy
        agree = logits.argmax(1) == x[:, :10].argmax(1)
        self.agreeing = x[clear & agree]
        self.disagreeing = x[clear & ~agree]
        self._used = {True: 0, False: 0}

    def rows(self, n: int, agree: bool) -> np.ndarray:
        pool = self.agreeing if agree else self.disagreeing
        start = self._used[agree]
        self._used[agree] = start + n
        assert start + n <= len(pool), "traffic pool exhausted"
        return pool[start : start + n]

    def send(self, url: str, sensor: str, n: int, agree: bool, batch: int = 50) -> None:
        rows = self.rows(n, agree)
        for i in range(0, n, batch):
            body = {"inputs": rows[i : i + batch].tolist(), "slice": {"sensor": sensor}}
            answer = httpx.post(f"{url}/v1/predict", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
