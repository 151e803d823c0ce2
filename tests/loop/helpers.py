"""Helpers for the loop tests: seeded samples in a real store, a webhook receiver, polling."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from distill_watchdog import metrics
from distill_watchdog.store import Store

from support import (
    SampleRecord,
    add_samples,
    eventually,  # noqa: F401 - re-exported for the suites
    mlp_reference,
    mlp_weights,
)

SENSORS = ("a", "b", "c")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def seed_samples(
    store: Store,
    version: str,
    n: int = 600,
    seed: int = 0,
    shift_c: float = 0.0,
    teacher_seed: int = 1,
    sensors: tuple[str, ...] = SENSORS,
    ago: float = 0.0,
) -> np.ndarray:
    """Stores `n` sampled rows (sensors a, b, c) answered by the seed-0 student and a seed-1 teacher.

    The numbers are those of the real ONNX models written by `support.write_model` (numpy
    reference of the same graph). `shift_c` moves sensor c's rows, so the student and teacher
    disagree there more.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 40)).astype(np.float32)
    sensor = np.array([sensors[i % len(sensors)] for i in range(n)])
    x[sensor == "c"] += shift_c * rng.normal(size=(int((sensor == "c").sum()), 40)).astype(np.float32)
    student = softmax(mlp_reference(x, mlp_weights(40, 10, seed=0)))
    teacher = softmax(mlp_reference(x, mlp_weights(40, 10, seed=teacher_seed)))
    now = time.time() - ago
    records = [
        SampleRecord(
            id=uuid.uuid4().hex,
            request_id=uuid.uuid4().hex,
            at=now - n + i,
            features=x[i],
            student_probs=student[i],
            student_version=version,
            slices={"sensor": str(sensor[i])},
            quarantined=False,
            teachers={"big": ("v1", teacher[i], False)},
        )
        for i in range(n)
    ]
    add_samples(store, records)
    return x


class Webhook:
    """A JSON receiver on loopback that records what it gets."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def names(self) -> list[str]:
        return [a["labels"]["alertname"] for a in self.received]

    def close(self) -> None:
        self.server.shutdown()


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0
