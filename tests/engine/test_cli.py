"""The command line on a tiny job, as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import write_job


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distill_engine", *args], cwd=cwd, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path) -> None:
    job = write_job(tmp_path, epochs=2)
    proc = _cli("--job", str(job), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["verdict"] in ("under_trained", "converged") and summary["student"]["accuracy"] > 0.5
    assert summary["selected"] in ("distilled", "baseline") and summary["note"]
    # stderr is not a TTY here: progress comes as JSON lines.
    events = [json.loads(ln)["event"] for ln in proc.stderr.splitlines() if ln.startswith("{")]
    assert events[0] == "start" and events[-1] == "done" and "epoch" in events
    for name in ("student.onnx", "card.json", "result.json", "report.html"):
        assert (tmp_path / "out" / name).is_file()


def test_cli_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("data: {train: a.npz, eval: b.npz}\nloss: {kd_weight: 2}\n")
    proc = _cli("--job", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: loss.kd_weight: ")
    assert "Traceback" not in proc.stderr
