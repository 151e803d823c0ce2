"""Warm start (`student.init_from`): real ONNX weights back into the torch module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill_engine import run_job_file
from distill_engine.errors import JobError
from distill_engine.export import export_onnx, onnx_logits
from distill_engine.warm import load_onnx_weights, onnx_initializers
from distill_engine.zoo import cnn1d, mlp

from .helpers import D, blobs, write_job


@pytest.mark.parametrize(
    "factory",
    [lambda: mlp(D, 3, hidden=(16, 8)), lambda: mlp(D, 3, hidden=(16,), dropout=0.2), lambda: cnn1d(D, 3)],
)
def test_loads_exported_weights_with_output_parity(tmp_path: Path, factory) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    trained = factory().eval()
    path = export_onnx(trained, D, tmp_path / "parent.onnx")
    torch.manual_seed(2)
    fresh = factory()
    x, _ = blobs(200, seed=3)
    info = load_onnx_weights(fresh, path, D, probe=x)
    fresh.eval()
    with torch.no_grad():
        ours = fresh(torch.as_tensor(x)).double().numpy()
    assert np.abs(ours - onnx_logits(path, x)).max() < 1e-5
    assert info["tensors"] == len(trained.state_dict()) and info["max_abs_logit_diff"] < 1e-5


def test_other_architecture_is_a_job_error(tmp_path: Path) -> None:
    path = export_onnx(mlp(D, 3, hidden=(16,)).eval(), D, tmp_path / "parent.onnx")
    for other in (mlp(D, 3, hidden=(8,)), mlp(D, 3, hidden=(16, 16))):  # narrower, deeper
        with pytest.raises(JobError, match="student.init_from: .*architecture"):
            load_onnx_weights(other, path, D)
    with pytest.raises(JobError, match="student.init_from: file not found"):
        load_onnx_weights(mlp(D, 3, hidden=(16,)), tmp_path / "missing.onnx", D)


@pytest.mark.parametrize(
    ("narrow", "wide"),
    [
        (lambda: mlp(D, 3, hidden=(16, 8)), lambda: mlp(D, 3, hidden=(40, 20))),
        (lambda: cnn1d(D, 3, channels=(8, 8)), lambda: cnn1d(D, 3, channels=(16, 12))),
    ],
)
def test_a_wider_student_grows_from_a_narrower_parent_with_its_outputs(  # type: ignore[no-untyped-def]
    tmp_path: Path, narrow, wide
) -> None:
    """The wider student starts out computing the parent's function; its new units are live."""
    torch.manual_seed(1)
    path = export_onnx(narrow().eval(), D, tmp_path / "parent.onnx")
    torch.manual_seed(2)
    grown = wide()
    x, _ = blobs(200, seed=3)
    info = load_onnx_weights(grown, path, D, probe=x, grow=True)
    grown.eval()
    with torch.no_grad():
        ours = grown(torch.as_tensor(x)).double().numpy()
    assert np.abs(ours - onnx_logits(path, x)).max() < 1e-4
    assert info["grown"] and info["matched_by_shape"] == []
    with pytest.raises(JobError, match="architecture"):  # without grow: a check that it is the same
        load_onnx_weights(wide(), path, D)
    # New units keep their fresh incoming weights (they are not dead copies of zeros).
    first = next(k for k in info["grown"] if k.endswith("weight"))
    parent_rows = dict(onnx_initializers(path))[first].shape[0]
    assert float(grown.state_dict()[first][parent_rows:].abs().sum()) > 0


def test_job_warm_starts_from_a_previous_student(tmp_path: Path) -> None:
    """Round 2 starts where round 1 ended: with zero training steps' worth of change it keeps its answers."""
    first = tmp_path / "r1"
    first.mkdir()
    res1 = run_job_file(write_job(first), first / "out", progress="none")
    job = yaml.safe_load((first / "job.yaml").read_text())
    job["student"]["init_from"] = str(res1.onnx_path)
    job["train"]["lr"] = 1e-9  # effectively no update: the candidate is the parent
    (first / "job2.yaml").write_text(yaml.safe_dump(job))
    res2 = run_job_file(first / "job2.yaml", first / "out2", progress="none")
    ev = np.load(first / "eval.npz")["x"]
    assert np.abs(onnx_logits(res2.onnx_path, ev) - onnx_logits(res1.onnx_path, ev)).max() < 1e-4
    result = json.loads((first / "out2" / "result.json").read_text())
    assert result["init_from"]["path"] == str(res1.onnx_path)
    assert result["init_from"]["matched_by_name"] == 4
