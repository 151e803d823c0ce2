"""The embedded demo: trains a small MNIST-1D student, registers it, serves it, shows a call.

Everything is generated offline (MNIST-1D from its generator, never downloaded).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from .config import load_settings


def make_mnist1d(num_samples: int, seed: int = 0, **shift: float) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    for key, value in shift.items():
        setattr(args, key, value)
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y


def train_demo_student(out_dir: Path, num_samples: int = 4000, epochs: int = 30) -> tuple[Path, Path, float]:
    """A small MLP trained on labels; returns (onnx path, card path, test accuracy)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y = make_mnist1d(num_samples)
    split = int(0.8 * len(x))
    net = nn.Sequential(
        nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:split]), torch.from_numpy(y[:split])
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(torch.from_numpy(x[split:])).argmax(1).numpy() == y[split:]).mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, card_path = out_dir / "student.onnx", out_dir / "card.json"
    torch.onnx.export(
        net,
        (torch.zeros(1, x.shape[1]),),
        str(onnx_path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    card = {
        "name": "mnist1d-mlp",
        "input_name": "x",
        "output_name": "logits",
        "num_features": int(x.shape[1]),
        "classes": list(range(10)),
        "output_kind": "logits",
        "temperature": 1.0,
        "training": {"data": "MNIST-1D (generated)", "samples": num_samples, "test_accuracy": acc},
    }
    card_path.write_text(json.dumps(card, indent=2))
    return onnx_path, card_path, acc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_demo(quick: bool = False, config: Path | None = None) -> None:
    import uvicorn

    from .app import create_app
    from .logs import setup_logging

    data_dir = Path("demo-data")
    print("demo: training a small MNIST-1D student (generated offline) ...", flush=True)
    onnx_path, card_path, acc = train_demo_student(data_dir / "student", epochs=10 if quick else 30)
    print(f"demo: student test accuracy {acc:.1%}", flush=True)
    port = _free_port()
    settings = load_settings(
        config,
        data_dir=str(data_dir),
        server={"port": port, "admin_token": "demo-token"},
        student={"model": str(onnx_path), "card": str(card_path)},
    )
    setup_logging("text")
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    x, y = make_mnist1d(400, seed=7)
    answer = httpx.post(
        f"{base}/v1/predict", json={"inputs": x[:5].tolist(), "slice": {"sensor": "a"}}
    ).json()
    print(
        f"demo: served by version {answer['model_version']}; predictions {answer['predictions']} "
        f"(true labels {y[:5].tolist()})"
    )
    row = json.dumps({"inputs": [[round(float(v), 3) for v in x[0]]]})
    print(
        "\nCall it yourself:\n"
        f"  curl -s {base}/v1/predict -H 'content-type: application/json' -d '{row}'\n"
        f"  curl -s {base}/metrics | grep watchdog_\n"
        f"  curl -s -H 'Authorization: Bearer demo-token' {base}/admin/models\n"
    )
    if quick:
        server.should_exit = True
        thread.join(timeout=10)
        return
    print("demo: serving until Ctrl-C", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(timeout=10)
