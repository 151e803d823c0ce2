"""Tiny real datasets and teachers for engine tests (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from distill_engine.export import export_onnx
from distill_engine.zoo import mlp

D, C = 8, 3


def blobs(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping Gaussian classes in 8-D (so a teacher is good but not perfect)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(0, 1.6, size=(C, D))
    y = rng.integers(0, C, n)
    x = centers[y] + rng.normal(0, 1.0, size=(n, D)) + shift
    return x.astype(np.float32), y.astype(np.int64)


def train_teacher(seed: int = 0, hidden: tuple[int, ...] = (32, 32)) -> torch.nn.Module:
    """An MLP teacher trained on labels for a few hundred full-batch steps."""
    torch.manual_seed(seed)
    x, y = blobs(1500, seed=100 + seed)
    model = mlp(D, C, hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


class SoftmaxWrap(torch.nn.Module):
    """Exports probabilities instead of logits (ONNX teachers usually do)."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.m(x), dim=1)


def teacher_onnx(path: Path, seed: int = 0) -> Path:
    """Write a trained teacher as ONNX with probabilities output."""
    return export_onnx(SoftmaxWrap(train_teacher(seed)), D, path)


def write_job(folder: Path, n_train: int = 600, n_eval: int = 300, epochs: int = 4, **overrides: Any) -> Path:
    """A complete tiny job folder: teacher.onnx, train.npz, eval.npz, job.yaml."""
    teacher_onnx(folder / "teacher.onnx")
    x, y = blobs(n_train, seed=1)
    xe, ye = blobs(n_eval, seed=2)
    slices = np.where(x[:, 0] > 0, "a", "b")
    np.savez(folder / "train.npz", x=x, y=y, slice=slices)
    np.savez(folder / "eval.npz", x=xe, y=ye, slice=np.where(xe[:, 0] > 0, "a", "b"))
    job: dict[str, Any] = {
        "name": "tiny",
        "student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [16]}},
        "teachers": [{"name": "big", "kind": "onnx", "path": "teacher.onnx"}],
        "data": {"train": "train.npz", "eval": "eval.npz"},
        "loss": {"temperature": 2.0, "kd_weight": 0.7},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "seed": 0},
    }
    for k, v in overrides.items():
        job[k] = v
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path
