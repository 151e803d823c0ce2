"""Intermediate-representation matching (FitNets-style hints).

Forward hooks read named student modules; a learned linear projector maps each to the
teacher's width when they differ. Projectors live only in the training wrapper and are never
exported: the exported student is the bare model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import JobError
from .job import HintSpec


class HintedStudent(nn.Module):
    """Training wrapper: the student plus projectors; `forward` returns logits and hint losses."""

    def __init__(
        self, student: nn.Module, hints: list[HintSpec], teacher_dims: list[int], num_features: int
    ) -> None:
        super().__init__()
        self.student = student
        self.hints = hints
        self._captured: dict[str, torch.Tensor] = {}
        modules = dict(student.named_modules())
        self._handles = []
        for i, h in enumerate(hints):
            if h.student not in modules or h.student == "":
                names = [n for n in modules if n][:20]
                raise JobError(
                    f"loss.hints.{i}.student", f"student has no module {h.student!r} (some: {names})"
                )
            self._handles.append(modules[h.student].register_forward_hook(self._hook(h.student)))
        was_training = student.training
        student.eval()
        with torch.no_grad():
            student(torch.zeros(2, num_features))
        student.train(was_training)
        projectors = []
        for h, t_dim in zip(hints, teacher_dims, strict=True):
            s_dim = self._captured[h.student].reshape(2, -1).shape[1]
            projectors.append(nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim))
        self.projectors = nn.ModuleList(projectors)
        self._captured.clear()

    def _hook(self, name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            self._captured[name] = out

        return hook

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = self.student(x)
        feats = [
            p(self._captured[h.student].reshape(len(x), -1))
            for h, p in zip(self.hints, self.projectors, strict=True)
        ]
        self._captured.clear()
        return logits, feats

    def remove_hooks(self) -> None:
        """Detach the hooks so the bare student exports without side effects."""
        for h in self._handles:
            h.remove()
        self._handles = []


def hint_loss(
    feats: list[torch.Tensor],
    targets: list[torch.Tensor],
    hints: list[HintSpec],
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted sum over hints of the per-row mean squared error, row-weighted like kd_loss."""
    total = torch.zeros((), dtype=feats[0].dtype)
    for f, t, h in zip(feats, targets, hints, strict=True):
        per_row = F.mse_loss(f, t.to(f.dtype), reduction="none").mean(dim=1)
        if row_weights is None:
            total = total + h.weight * per_row.mean()
        else:
            total = total + h.weight * (row_weights * per_row).sum() / row_weights.sum().clamp_min(1e-12)
    return total
