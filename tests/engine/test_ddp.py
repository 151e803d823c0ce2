"""DDP: two gloo processes on loopback under torchrun reach single-process quality."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import write_job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_match_single_process(tmp_path: Path) -> None:
    job = write_job(tmp_path, n_train=1200, epochs=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill_engine",
            "--job",
            str(job),
            "--out",
            str(tmp_path / "one"),
            "--progress",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            "-m",
            "distill_engine",
            "--job",
            str(job),
            "--out",
            str(tmp_path / "two"),
            "--progress",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert abs(two["student"]["accuracy"] - one["student"]["accuracy"]) <= 0.03
    assert abs(two["student"]["agreement"] - one["student"]["agreement"]) <= 0.03
    assert two["student"]["accuracy"] >= 0.85 and two["onnx_parity"]["ok"]
    assert json.loads((tmp_path / "two" / "card.json").read_text())["training"]["world_size"] == 2
