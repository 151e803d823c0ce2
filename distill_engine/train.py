"""The training loop shared by students, assistants and baselines (single process or DDP).

Global batches are cut from one seeded permutation; under DDP each rank takes every
world_size-th row of the global batch, so N processes see the same global batches as one
and averaged gradients approximate the single-process step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .dist import DistContext
from .hints import HintedStudent, hint_loss
from .job import HintSpec, LossSpec
from .loss import kd_loss, kd_weight_at
from .progress import Progress


@dataclass
class TrainData:
    """Training rows as tensors: labels use -1 where unknown; weights default to 1."""

    x: torch.Tensor
    teacher_probs: torch.Tensor | None
    labels: torch.Tensor | None
    weights: torch.Tensor
    hint_targets: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.x)


def make_data(
    x: np.ndarray,
    teacher_probs: np.ndarray | None,
    labels: np.ndarray | None,
    weights: np.ndarray | None = None,
    hint_targets: list[np.ndarray] | None = None,
) -> TrainData:
    """Tensors from numpy arrays."""
    return TrainData(
        torch.as_tensor(np.asarray(x, dtype=np.float32)),
        None if teacher_probs is None else torch.as_tensor(np.asarray(teacher_probs, dtype=np.float32)),
        None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64)),
        torch.as_tensor(np.ones(len(x)) if weights is None else np.asarray(weights), dtype=torch.float32),
        [torch.as_tensor(np.asarray(h, dtype=np.float32)) for h in (hint_targets or [])],
    )


def _batches(n: int, batch_size: int, seed: int, epoch: int, ctx: DistContext) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    out = []
    for i in range(0, n, batch_size):
        b = perm[i : i + batch_size]
        if ctx.distributed:
            if len(b) < ctx.world_size:  # every rank must take the same number of steps
                continue
            b = b[ctx.rank :: ctx.world_size]
        out.append(b)
    return out


def _wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def train_model(
    model: nn.Module,
    data: TrainData,
    loss_spec: LossSpec,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    ctx: DistContext,
    progress: Progress,
    phase: str,
    hints: list[HintSpec] | None = None,
    hint_epochs: int = 0,
    num_features: int = 0,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Train in place: optional hint stage, then output distillation. Returns per-epoch curves."""
    dev = ctx.device
    model.to(dev)
    curves: list[dict[str, Any]] = []
    if hints and hint_epochs > 0:
        wrapper = HintedStudent(model, hints, [int(t.shape[1]) for t in data.hint_targets], num_features).to(
            dev
        )
        net = _wrap(wrapper, ctx)
        opt = torch.optim.AdamW(wrapper.parameters(), lr=lr, weight_decay=weight_decay)
        progress.emit("phase_start", phase=f"{phase}:hints", epochs=hint_epochs)
        for epoch in range(hint_epochs):
            net.train()
            total, count = 0.0, 0
            for b in _batches(len(data), batch_size, seed + 7, epoch, ctx):
                progress.check_cancelled()
                _, feats = net(data.x[b].to(dev))
                loss = hint_loss(
                    feats, [t[b].to(dev) for t in data.hint_targets], hints, data.weights[b].to(dev)
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                count += len(b)
            rec = {"phase": f"{phase}:hints", "epoch": epoch + 1, "hint_loss": total / max(count, 1)}
            curves.append(rec)
            progress.emit("epoch", **rec)
        wrapper.remove_hooks()
    net = _wrap(model, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(_batches(len(data), batch_size, seed, 0, ctx)))
    total_steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    progress.emit("phase_start", phase=phase, epochs=epochs)
    step = 0
    for epoch in range(epochs):
        net.train()
        total, count = 0.0, 0
        for b in _batches(len(data), batch_size, seed, epoch, ctx):
            progress.check_cancelled()
            alpha = kd_weight_at(
                step / max(total_steps - 1, 1),
                loss_spec.kd_weight,
                loss_spec.kd_weight_end,
                loss_spec.schedule,
            )
            logits = net(data.x[b].to(dev))
            loss = kd_loss(
                logits,
                None if data.teacher_probs is None else data.teacher_probs[b].to(dev),
                None if data.labels is None else data.labels[b].to(dev),
                loss_spec.temperature,
                alpha,
                data.weights[b].to(dev),
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * len(b)
            count += len(b)
        rec: dict[str, Any] = {
            "phase": phase,
            "epoch": epoch + 1,
            "loss": total / max(count, 1),
            "kd_weight": alpha,
        }
        if eval_fn is not None and ctx.is_main:
            model.eval()
            rec.update(eval_fn(model))
        curves.append(rec)
        progress.emit("epoch", **rec)
    model.eval()
    return curves


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: np.ndarray | torch.Tensor, device: torch.device | None = None, batch_size: int = 4096
) -> np.ndarray:
    """Logits of a model in eval mode, batched, as float64 numpy."""
    model.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x
    dev = device or next(model.parameters()).device
    outs = [model(xt[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(xt), batch_size)]
    return torch.cat(outs).double().numpy() if outs else np.zeros((0, 0))
