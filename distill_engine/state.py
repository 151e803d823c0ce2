"""The state one run's stages share, and the small helpers they all use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics as M
from .curation import Curated
from .data import Table
from .dist import DistContext
from .job import DistillJob
from .progress import Progress
from .scoring import fit_t, labels_or_none
from .synthesis import Synthetic
from .teaching import TeacherOutputs
from .train import TrainData, make_data, predict_logits


@dataclass
class RunState:
    """Everything the stages share: the job, its tables, teacher outputs and the row split."""

    job: DistillJob
    out: Path
    progress: Progress
    ctx: DistContext
    t0: float
    train: Table
    ev: Table
    teach: TeacherOutputs
    num_classes: int = 0
    cur: Curated | None = None
    fit_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hold_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    weights_fit: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hints: list[np.ndarray] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    warm_start: dict[str, Any] | None = None
    production: np.ndarray | None = None
    synth: Synthetic | None = None
    ablation: dict[str, Any] | None = None

    @property
    def num_features(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def ev_labels(self) -> np.ndarray | None:
        return labels_or_none(self.ev)

    def labels(self, idx: np.ndarray) -> np.ndarray | None:
        return None if self.train.y is None else self.train.y[idx]

    def eval_fn(self, model: torch.nn.Module) -> dict[str, float]:
        """Eval-set agreement (and accuracy) per epoch, for the curves only: never for selection."""
        p = M.softmax(predict_logits(model, self.ev.x))
        rec = {"eval_agreement": M.agreement(p, self.teach.eval_probs)}
        if self.ev_labels is not None:
            rec["eval_accuracy"] = M.accuracy(p, self.ev_labels)
        return rec

    def common(self) -> dict[str, Any]:
        """Keyword arguments every `train_model` call of this run shares."""
        return {"ctx": self.ctx, "progress": self.progress, "num_features": self.num_features}


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def holdout_data(st: RunState, teacher_all: np.ndarray | None, labels: bool = True) -> TrainData | None:
    """The hold-out rows as validation data (None when there are none)."""
    if not len(st.hold_idx):
        return None
    y = st.labels(st.hold_idx) if labels else None
    return make_data(st.train.x[st.hold_idx], None if teacher_all is None else teacher_all[st.hold_idx], y)


def temperature_on_holdout(st: RunState, model: torch.nn.Module) -> tuple[float, str]:
    """Temperature fitted on the hold-out: labels when all present, else the teacher's probabilities."""
    if not (st.job.calibrate.enabled and len(st.hold_idx)):
        return 1.0, "none"
    return fit_t(
        predict_logits(model, st.train.x[st.hold_idx]),
        st.labels(st.hold_idx),
        st.teach.train_probs[st.hold_idx],
    )
