"""The Kubernetes torchrun Job's own command line, run here as its pods would run it: one process
per node rank on loopback, a tiny real distillation job, the outputs on the "shared volume"."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .files import K8S
from .test_compose_k8s import _render_job
from support import VENV_BIN, free_port


@pytest.mark.slow
def test_torchrun_job_command_trains_across_node_ranks(tmp_path: Path):
    from engine.helpers import write_job

    data = tmp_path / "data"  # stands in for the PVC mounted at /data
    (data / "jobs").mkdir(parents=True)
    job_file = write_job(data / "jobs", epochs=2)
    out_dir = data / "runs" / "r1"

    docs = _render_job(K8S / "jobs" / "distill-job-torchrun.yaml")
    job = next(d for d in docs if d["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    nnodes = int(env["NNODES"])
    env.update(
        MASTER_ADDR="127.0.0.1",  # in the cluster: pod 0's name under the headless Service
        MASTER_PORT=str(free_port()),
        JOB_FILE=str(job_file),
        OUT_DIR=str(out_dir),
        OMP_NUM_THREADS="1",
    )
    path = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    base = {**os.environ, "PATH": path, "DO_NOT_TRACK": "1"}
    pods = []
    for rank in range(nnodes):
        log = open(tmp_path / f"pod-{rank}.log", "wb")  # noqa: SIM115 - closed below
        pod_env = {**base, **env, "JOB_COMPLETION_INDEX": str(rank)}
        pods.append((subprocess.Popen(["/bin/sh", "-c", script], env=pod_env, stdout=log, stderr=log), log))
    codes = []
    for proc, log in pods:
        try:
            codes.append(proc.wait(timeout=240))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
        log.close()
    logs = "\n".join((tmp_path / f"pod-{r}.log").read_text(errors="replace")[-2000:] for r in range(nnodes))
    assert codes == [0] * nnodes, logs
    for name in ("student.onnx", "card.json", "result.json", "report.html"):
        assert (out_dir / name).is_file(), f"{name} missing\n{logs}"
    result = json.loads((out_dir / "result.json").read_text())
    assert result.get("world_size", nnodes) == nnodes  # the engine records its DDP world size
    assert result["onnx_parity"]["ok"]
