"""Forward hooks, projectors, and the hint stage; projectors never reach the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from distill_engine.dist import DistContext
from distill_engine.errors import JobError
from distill_engine.export import export_onnx
from distill_engine.hints import HintedStudent, hint_loss
from distill_engine.job import HintSpec, LossSpec, TrainSpec
from distill_engine.progress import Progress
from distill_engine.train import make_data, train_model
from distill_engine.zoo import cnn1d, count_params, mlp


def test_hooks_capture_and_projectors_match_widths() -> None:
    torch.manual_seed(0)
    student = mlp(8, 3, hidden=[16, 4])
    hints = [HintSpec(teacher="t1", student="body.1"), HintSpec(teacher="t2", student="body.3")]
    wrapped = HintedStudent(student, hints, teacher_dims=[32, 4], num_features=8)
    assert isinstance(wrapped.projectors[0], torch.nn.Linear) and wrapped.projectors[0].in_features == 16
    assert isinstance(wrapped.projectors[1], torch.nn.Identity)  # same width: no projector
    x = torch.randn(5, 8)
    logits, feats = wrapped(x)
    assert logits.shape == (5, 3) and feats[0].shape == (5, 32) and feats[1].shape == (5, 4)
    h = torch.relu(student.body[0](x))
    assert torch.allclose(feats[0], wrapped.projectors[0](h))
    assert torch.allclose(feats[1], torch.relu(student.body[2](h)))


def test_unknown_student_module_names_the_field() -> None:
    with pytest.raises(JobError, match=r"loss\.hints\.0\.student"):
        HintedStudent(mlp(8, 3), [HintSpec(teacher="t", student="nope")], [4], 8)


def test_hint_loss_weighted() -> None:
    f = [torch.tensor([[1.0, 1.0], [0.0, 0.0]])]
    t = [torch.zeros(2, 2)]
    assert float(hint_loss(f, t, [HintSpec(teacher="a", student="b", weight=2.0)])) == pytest.approx(1.0)
    w = torch.tensor([1.0, 3.0])
    assert float(hint_loss(f, t, [HintSpec(teacher="a", student="b")], w)) == pytest.approx(0.25)


def test_hint_stage_learns_teacher_features_and_export_has_no_projector(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 40)).astype(np.float32)
    proj = rng.normal(size=(40, 24)).astype(np.float32)
    target = np.maximum(x @ proj, 0)  # a learnable "teacher feature"
    student = cnn1d(40, 10, channels=[8, 8], hidden=0)
    hints = [HintSpec(teacher="feat", student="features")]
    data = make_data(x, np.full((512, 10), 0.1), None, None, [target])
    curves = train_model(
        student,
        data,
        LossSpec(hints=hints),
        TrainSpec(epochs=1, batch_size=64, lr=0.01, seed=0),
        ctx=DistContext(),
        progress=Progress("none"),
        phase="s",
        hints=hints,
        hint_epochs=6,
        num_features=40,
    )
    hint_curve = [c["hint_loss"] for c in curves.curves if "hint_loss" in c]
    assert len(hint_curve) == 6 and hint_curve[-1] < 0.7 * hint_curve[0]
    path = export_onnx(student, 40, tmp_path / "s.onnx")
    n_onnx = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    assert n_onnx == count_params(student)
    assert not student._forward_hooks and not student.features._forward_hooks
