"""The training loop shared by students, assistants, baselines and probes (single process or DDP).

Global batches are cut from one seeded permutation; under DDP each rank takes every
world_size-th row of the global batch, so N processes see the same global batches as one
and averaged gradients approximate the single-process step.

`epochs` is a maximum: with validation rows the loop scores every epoch, stops after
`patience` epochs without improvement and restores the best epoch's weights. The learning
rate warms up, holds, and decays only over the last part of the maximum run, so a short job
is not starved by a decay that starts at step one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .dist import DistContext
from .hints import HintedStudent, hint_loss
from .job import HintSpec, LossSpec, TrainSpec
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


@dataclass
class TrainRun:
    """What one training phase did: per-epoch curves and the early-stopping outcome."""

    curves: list[dict[str, Any]]
    epochs_run: int = 0
    max_epochs: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    val_curve: list[float] = field(default_factory=list)
    kept_epoch: int | None = None  # the epoch whose weights the model has (`train.keep`)

    def summary(self) -> dict[str, Any]:
        """The result.json block of this phase (curves live elsewhere)."""
        return {
            "epochs_run": self.epochs_run,
            "max_epochs": self.max_epochs,
            "best_epoch": self.best_epoch,
            "best_val_score": self.best_score,
            "stopped_early": self.stopped_early,
            "kept_epoch": self.kept_epoch,
            "val_curve": self.val_curve,
        }


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


def lr_factor(step: int, total: int, spec: TrainSpec) -> float:
    """Multiplier of the base learning rate at `step` of `total` (see TrainSpec.lr_schedule)."""
    if spec.lr_schedule == "constant":
        return 1.0
    if spec.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    warm = max(1, int(round(spec.warmup * total)))
    if step < warm:
        return (step + 1) / warm
    start = total - int(round(spec.decay * total))
    if step < start or start >= total:
        return 1.0
    p = (step - start) / max(total - start, 1)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


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


def _hint_stage(
    model: nn.Module,
    data: TrainData,
    hints: list[HintSpec],
    epochs: int,
    spec: TrainSpec,
    num_features: int,
    ctx: DistContext,
    progress: Progress,
    phase: str,
) -> list[dict[str, Any]]:
    """FitNets stage: the layers up to each hinted module learn the teacher's features."""
    dev = ctx.device
    dims = [int(t.shape[1]) for t in data.hint_targets]
    wrapper = HintedStudent(model, hints, dims, num_features).to(dev)
    net = _wrap(wrapper, ctx)
    opt = torch.optim.AdamW(wrapper.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    progress.emit("phase_start", phase=f"{phase}:hints", epochs=epochs)
    curves: list[dict[str, Any]] = []
    for epoch in range(epochs):
        net.train()
        total, count = 0.0, 0
        for b in _batches(len(data), spec.batch_size, spec.seed + 7, epoch, ctx):
            progress.check_cancelled()
            _, feats = net(data.x[b].to(dev))
            loss = hint_loss(feats, [t[b].to(dev) for t in data.hint_targets], hints, data.weights[b].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            count += len(b)
        rec = {"phase": f"{phase}:hints", "epoch": epoch + 1, "hint_loss": total / max(count, 1)}
        curves.append(rec)
        progress.emit("epoch", **rec)
    wrapper.remove_hooks()
    return curves


@torch.no_grad()
def _validate(
    model: nn.Module, val: TrainData, loss_spec: LossSpec, alpha: float, dev: torch.device
) -> dict[str, float]:
    """Validation score (agreement with the teacher, else label accuracy) and loss."""
    model.eval()
    logits = torch.cat([model(val.x[i : i + 4096].to(dev)).float() for i in range(0, len(val), 4096)])
    teacher = None if val.teacher_probs is None else val.teacher_probs.to(dev)
    labels = None if val.labels is None else val.labels.to(dev)
    loss = kd_loss(logits, teacher, labels, loss_spec.temperature, alpha if teacher is not None else 0.0)
    target = teacher.argmax(1) if teacher is not None else labels
    assert target is not None
    known = target >= 0
    score = float((logits.argmax(1)[known] == target[known]).float().mean()) if bool(known.any()) else 0.0
    return {"val_score": score, "val_loss": float(loss)}


class _Best:
    """Best epoch so far: higher validation score, ties broken by lower validation loss."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.epoch: int | None = None
        self.score = -math.inf
        self.loss = math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, score: float, loss: float) -> bool:
        if score > self.score + 1e-9 or (abs(score - self.score) <= 1e-9 and loss < self.loss - 1e-6):
            self.epoch, self.score, self.loss = epoch, score, loss
            self.state = copy.deepcopy(self.model.state_dict())
            return True
        return False

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def train_model(
    model: nn.Module,
    data: TrainData,
    loss_spec: LossSpec,
    spec: TrainSpec,
    *,
    ctx: DistContext,
    progress: Progress,
    phase: str,
    epochs: int | None = None,
    val: TrainData | None = None,
    hints: list[HintSpec] | None = None,
    hint_epochs: int = 0,
    num_features: int = 0,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
) -> TrainRun:
    """Train in place (optional hint stage, then output distillation); best epoch restored."""
    max_epochs = epochs or spec.epochs
    run = TrainRun([], max_epochs=max_epochs)
    if hints and hint_epochs > 0:
        run.curves += _hint_stage(model, data, hints, hint_epochs, spec, num_features, ctx, progress, phase)
    dev = ctx.device
    model.to(dev)
    net = _wrap(model, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    total_steps = max_epochs * max(1, len(_batches(len(data), spec.batch_size, spec.seed, 0, ctx)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, spec))
    best, since_best, step = _Best(model), 0, 0
    progress.emit("phase_start", phase=phase, epochs=max_epochs)
    for epoch in range(1, max_epochs + 1):
        net.train()
        total, count, alpha = 0.0, 0, loss_spec.kd_weight
        for b in _batches(len(data), spec.batch_size, spec.seed, epoch - 1, ctx):
            progress.check_cancelled()
            alpha = kd_weight_at(
                step / max(total_steps - 1, 1),
                loss_spec.kd_weight,
                loss_spec.kd_weight_end,
                loss_spec.schedule,
            )
            loss = kd_loss(
                net(data.x[b].to(dev)),
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
            "epoch": epoch,
            "loss": total / max(count, 1),
            "kd_weight": alpha,
        }
        rec["lr"] = opt.param_groups[0]["lr"]
        if val is not None and len(val):
            rec.update(_validate(model, val, loss_spec, alpha, dev))
            run.val_curve.append(rec["val_score"])
            since_best = 0 if best.offer(epoch, rec["val_score"], rec["val_loss"]) else since_best + 1
        if eval_fn is not None and ctx.is_main:
            model.eval()
            rec.update(eval_fn(model))
        run.curves.append(rec)
        run.epochs_run = epoch
        progress.emit("epoch", **rec)
        if spec.patience and since_best >= spec.patience and epoch >= spec.min_epochs:
            run.stopped_early = True
            break
    if spec.keep == "best":
        best.restore()
    run.best_epoch, run.best_score = best.epoch, (best.score if best.epoch else None)
    run.kept_epoch = run.epochs_run if spec.keep == "last" or not best.epoch else best.epoch
    model.eval()
    return run


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
