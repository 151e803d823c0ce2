"""Distillation loss and kd-weight schedules.

Conventions (docs/engine.md):
* Teacher probabilities p are softened as softmax(log p / T); the teacher term is
  KL(p_T || softmax(z / T)) summed over classes, averaged over rows (`batchmean`), times T²
  so its gradient scale does not shrink with T (Hinton et al.).
* The label term is cross-entropy at T = 1. Per row: alpha * T² KL + (1 - alpha) * CE, with
  alpha = kd_weight; rows without a label (y = -1) use alpha = 1.
* Row weights w give a weighted mean: sum(w_i l_i) / sum(w_i).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_weight_at(progress: float, start: float, end: float | None, schedule: str) -> float:
    """Teacher-term weight at `progress` in [0, 1]: `start` → `end` (default 1 - start).

    `constant` keeps `start`; `linear` interpolates; `cosine` follows a half cosine, so
    training begins teacher-heavy and ends label-heavy when start > end.
    """
    if schedule == "constant":
        return start
    stop = (1.0 - start) if end is None else end
    p = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return start + (stop - start) * p
    if schedule == "cosine":
        return stop + (start - stop) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule {schedule!r}")


def soften(teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher probabilities re-tempered: softmax(log p / T)."""
    return F.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / temperature, dim=1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    labels: torch.Tensor | None,
    temperature: float,
    kd_weight: float,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The combined loss of one batch (see module docstring for the exact formula)."""
    n = student_logits.shape[0]
    per_row = torch.zeros(n, dtype=student_logits.dtype, device=student_logits.device)
    has_label = (
        labels >= 0 if labels is not None else torch.zeros(n, dtype=torch.bool, device=student_logits.device)
    )
    if teacher_probs is None and not bool(has_label.all()):
        raise ValueError("rows without labels need teacher probabilities")
    alpha = (
        torch.where(
            has_label,
            torch.as_tensor(kd_weight, dtype=per_row.dtype, device=per_row.device),
            torch.ones_like(per_row),
        )
        if teacher_probs is not None
        else torch.zeros_like(per_row)
    )
    if teacher_probs is not None:
        target = soften(teacher_probs.to(student_logits.dtype), temperature)
        log_student = F.log_softmax(student_logits / temperature, dim=1)
        kl = (target * (torch.log(target.clamp_min(1e-12)) - log_student)).sum(dim=1)
        per_row = per_row + alpha * kl * temperature**2
    if labels is not None and bool(has_label.any()):
        ce = F.cross_entropy(student_logits, labels.clamp_min(0), reduction="none")
        per_row = per_row + torch.where(has_label, (1 - alpha) * ce, torch.zeros_like(ce))
    if row_weights is None:
        return per_row.mean()
    w = row_weights.to(per_row.dtype)
    return (w * per_row).sum() / w.sum().clamp_min(1e-12)
