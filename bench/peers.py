"""Peers side by side: the daemon (sampling 10% to a local ONNX teacher) against KServe, MLServer
and a naive FastAPI server, all serving the same ONNX MLP (40 inputs, 10 classes).

One run, one machine, one load generator (wrk, one thread), concurrency 1 and 32, one row per
request, each server in its own process and each peer in its own virtual environment:

- distill-watchdog: `/v1/predict` (and its OIP v2 route), sampling 10% of rows to an ONNX teacher
- KServe: a `kserve.Model` custom model wrapping ONNX Runtime (bench/peers/kserve/model.py), v1 `:predict`
- MLServer: an `MLModel` custom runtime wrapping ONNX Runtime (bench/peers/mlserver/runtime.py), v2 `infer`
- naive: FastAPI + pydantic + `session.run` per request (bench/serving_peers.py naive)

Peer environments live in bench/peers/<name>/venv (ignored by git), created from the pinned
bench/peers/<name>/requirements.txt when missing. Appends its table to docs/BENCHMARKS.md.

    .venv/bin/python bench/peers.py [--seconds 10] [--only kserve,mlserver] [--no-append]
    .venv/bin/python bench/peers.py --setup     # only create the peer environments
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import common
import httpx
import numpy as np
from common import (
    ROOT,
    VENV_BIN,
    Child,
    Load,
    command_line,
    free_port,
    mlp_onnx_bytes,
    record,
    warm,
)

PEERS_DIR = ROOT / "bench" / "peers"
OUT = ROOT / "bench" / "out" / "peers"
PYTHON = "python3.11"  # the peers pin wheels for CPython 3.11, like the daemon
MODEL_NAME = "mlp"


@dataclass
class Server:
    """How to start one server and what single-row request it answers."""

    name: str
    start: Callable[[int], Child]
    path: str
    body: bytes
    decode: Callable[[dict], list[float]]  # the answer's probabilities of the row


def venv_python(peer: str) -> Path:
    return PEERS_DIR / peer / "venv" / "bin" / "python"


def setup(peer: str) -> Path:
    """Creates bench/peers/<peer>/venv from its pinned requirements.txt unless it exists."""
    python = venv_python(peer)
    if python.exists():
        return python
    base = shutil.which(PYTHON) or sys.executable
    venv = python.parent.parent
    print(f"setting up {venv} (pip install -r requirements.txt; minutes) ...", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    req = PEERS_DIR / peer / "requirements.txt"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(req)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        shutil.rmtree(venv, ignore_errors=True)
        raise RuntimeError(f"{peer}: pip install failed:\n{result.stderr[-2000:]}")
    return python


def write_model(folder: Path) -> tuple[Path, Path, Path]:
    """The student (MLP 40 -> 64 -> 10), its card, and a larger teacher (MLP 40 -> 256 -> 10)."""
    folder.mkdir(parents=True, exist_ok=True)
    model, card, teacher = folder / "mlp.onnx", folder / "card.json", folder / "teacher.onnx"
    model.write_bytes(mlp_onnx_bytes(40, 10, hidden=64))
    teacher.write_bytes(mlp_onnx_bytes(40, 10, hidden=256, seed=1))
    card.write_text(
        json.dumps(
            {
                "name": "bench-mlp",
                "input_name": "x",
                "output_name": "logits",
                "num_features": 40,
                "classes": list(range(10)),
            }
        )
    )
    return model, card, teacher


def daemon(model: Path, card: Path, teacher: Path, rate: float = 0.1) -> Callable[[int], Child]:
    def start(port: int) -> Child:
        config = OUT / f"watchdog-{port}.yaml"
        config.write_text(
            json.dumps(
                {
                    "data_dir": str(OUT / f"data-{port}"),
                    "server": {"port": port, "log_format": "json"},
                    "student": {"name": MODEL_NAME, "model": str(model), "card": str(card)},
                    "teachers": [
                        {
                            "name": "big",
                            "kind": "onnx",
                            "location": str(teacher),
                            "options": {"output_kind": "logits", "version": "bench"},
                        }
                    ],
                    "sampling": {"rate": rate},
                }
            )
        )
        argv = [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(config)]
        return Child(argv, port, ready="/v2/health/ready")

    return start


def kserve(model: Path) -> Callable[[int], Child]:
    def start(port: int) -> Child:
        argv = [
            str(venv_python("kserve")),
            str(PEERS_DIR / "kserve" / "model.py"),
            "--model_name",
            MODEL_NAME,
            "--model_path",
            str(model),
            "--http_port",
            str(port),
            "--grpc_port",
            str(free_port()),
        ]
        return Child(argv, port, ready=f"/v1/models/{MODEL_NAME}")

    return start


def mlserver(model: Path) -> Callable[[int], Child]:
    def start(port: int) -> Child:
        folder = OUT / f"mlserver-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(PEERS_DIR / "mlserver" / "runtime.py", folder / "runtime.py")
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": MODEL_NAME,
                    "implementation": "runtime.OnnxRuntime",
                    "parameters": {"uri": str(model)},
                }
            )
        )
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "http_port": port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                }
            )
        )
        argv = [str(venv_python("mlserver").parent / "mlserver"), "start", str(folder)]
        return Child(argv, port, ready=f"/v2/models/{MODEL_NAME}/ready")

    return start


def naive(model: Path) -> Callable[[int], Child]:
    def start(port: int) -> Child:
        argv = [
            str(VENV_BIN / "python"),
            str(ROOT / "bench" / "serving_peers.py"),
            "naive",
            str(port),
            str(model),
        ]
        return Child(argv, port)

    return start


def wrk(url: str, body: bytes, connections: int, seconds: int) -> Load:
    """common.wrk with this script's own Lua file and body."""
    return common.wrk(url, body, connections, seconds, workdir=OUT)


def v2_body(row: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 40], "datatype": "FP32", "data": row}]}).encode()


def sampled(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    return {
        o: float(v) for o, v in re.findall(r'^watchdog_samples_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated subset: daemon,kserve,mlserver,naive")
    parser.add_argument("--setup", action="store_true", help="only create the peer environments")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    missing: dict[str, str] = {}
    for peer in ("kserve", "mlserver"):
        try:
            setup(peer)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            missing[peer] = str(exc).splitlines()[-1][:300]
            print(f"{peer}: cannot be installed here: {missing[peer]}", flush=True)
    if args.setup:
        return

    shutil.rmtree(OUT, ignore_errors=True)
    model, card, teacher = write_model(OUT)
    row = np.random.default_rng(0).normal(size=40).round(4).tolist()
    v1 = json.dumps({"inputs": [row]}).encode()
    servers = [
        Server(
            "distill-watchdog, sampling 10% to an ONNX teacher",
            daemon(model, card, teacher),
            "/v1/predict",
            v1,
            lambda a: a["probabilities"][0],
        ),
        Server(
            "distill-watchdog, sampling off (reference, not compared)",
            daemon(model, card, teacher, rate=0.0),
            "/v1/predict",
            v1,
            lambda a: a["probabilities"][0],
        ),
        Server(
            "distill-watchdog, OIP v2 infer route, sampling 10%",
            daemon(model, card, teacher),
            f"/v2/models/{MODEL_NAME}/infer",
            v2_body(row),
            lambda a: a["outputs"][0]["data"],
        ),
        Server(
            "KServe 0.21 custom Model (v1 :predict)",
            kserve(model),
            f"/v1/models/{MODEL_NAME}:predict",
            json.dumps({"instances": [row]}).encode(),
            lambda a: a["predictions"][0],
        ),
        Server(
            "MLServer 1.7 custom runtime (v2 infer)",
            mlserver(model),
            f"/v2/models/{MODEL_NAME}/infer",
            v2_body(row),
            lambda a: a["outputs"][0]["data"],
        ),
        Server(
            "naive FastAPI + session.run", naive(model), "/v1/predict", v1, lambda a: a["probabilities"][0]
        ),
    ]
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}

    def picked(server: Server) -> bool:
        key = server.name.split()[0].lower().rstrip(",")
        key = {"distill-watchdog": "daemon"}.get(key, key)
        return key not in missing and (not wanted or key in wanted)

    results: dict[str, dict[int, Load]] = {}
    reference: list[float] | None = None
    notes: list[str] = []
    for server in filter(picked, servers):
        with server.start(free_port()) as child:
            url = child.url + server.path
            answer = httpx.post(
                url, content=server.body, headers={"content-type": "application/json"}, timeout=30
            )
            answer.raise_for_status()
            probs = server.decode(answer.json())
            reference = reference or probs
            if not np.allclose(probs, reference, atol=1e-5):
                raise SystemExit(f"{server.name}: answers {probs[:3]}..., expected {reference[:3]}...")
            warm(url, server.body)
            before = sampled(child.url) if server.name.startswith("distill") else {}
            results[server.name] = {c: wrk(url, server.body, c, args.seconds) for c in (1, 32)}
            if before:
                after = sampled(child.url)
                moved = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
                served = sum(r.requests for r in results[server.name].values())
                notes.append(
                    f"{server.name}: {served} requests, sampled rows {moved} (10% target: ~{served // 10})"
                )
        print(
            f"{server.name}: "
            + ", ".join(
                f"c{c} {r.rps:,.0f} req/s p99 {r.p99_ms:.2f} ms" for c, r in results[server.name].items()
            ),
            flush=True,
        )

    lines = ["| server | conc. | req/s | p50 ms | p99 ms | failed |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        for conns, r in res.items():
            lines.append(
                f"| {name} | {conns} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.failed} |"
            )
    ours = results.get(servers[0].name)
    if ours:
        lines += [
            "",
            "| daemon vs | throughput ×, c=1 / c=32 | p99 ×, c=1 / c=32 | target met |",
            "|---|---|---|---|",
        ]
        for name, res in results.items():
            if name.startswith("distill"):
                continue
            thr = [ours[c].rps / res[c].rps for c in (1, 32)]
            p99 = [ours[c].p99_ms / res[c].p99_ms for c in (1, 32)]
            met = all(t > 1 for t in thr) and all(p < 1 for p in p99)
            lines.append(
                f"| {name} | {thr[0]:.2f} / {thr[1]:.2f} | {p99[0]:.2f} / {p99[1]:.2f} | "
                f"{'yes' if met else 'NO'} |"
            )
    for peer, why in missing.items():
        notes.append(f"{peer}: not installed here ({why})")
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    if not args.no_append:
        notes.insert(
            0,
            "Throughput × > 1 and p99 × < 1 mean the daemon is ahead. Each server ran alone, one after "
            "another; every answer was checked against the same probabilities first. Not pinned: each "
            "server's processes use both cores (the daemon's teacher and storage processes only what "
            "serving leaves idle).",
        )
        record(
            "peers",
            "Peers side by side",
            command_line(),
            table,
            "\n".join(f"- {n}" for n in notes),
        )


if __name__ == "__main__":
    main()
