"""`distill-watchdog distill --job JOB.yaml --out DIR`: the contract's command on a tiny job."""

from __future__ import annotations

import json
import subprocess

import pytest
from engine.helpers import write_job

from support import CLI


@pytest.mark.slow
def test_distill_command_writes_the_four_files(tmp_path):
    job = write_job(tmp_path, epochs=2)
    out = subprocess.run(
        [CLI, "distill", "--job", str(job), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and "verdict" in out.stdout
    for name in ("student.onnx", "card.json", "result.json", "report.html"):
        assert (tmp_path / "out" / name).is_file()
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    for key in (
        "teacher",
        "student",
        "baseline",
        "temperature",
        "curation",
        "stages",
        "stop",
        "onnx_parity",
        "params",
        "wall_seconds",
    ):
        assert key in result, key


def test_distill_command_user_error_is_one_line(tmp_path):
    (tmp_path / "job.yaml").write_text("data: {train: a.npz, eval: b.npz}\nloss: {kd_weight: 2}\n")
    out = subprocess.run(
        [CLI, "distill", "--job", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: loss.kd_weight") and len(out.stderr.strip().splitlines()) == 1
