"""`models card|register MODEL.onnx --classes ...`: the card read from the ONNX file; from a model
file and its class names to a served, monitored student with two commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from support import CLI, DaemonProcess, eventually, free_port, mlp_onnx_bytes, mlp_reference, mlp_weights


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=180)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_card_is_read_from_the_graph_and_a_probe_batch(tmp_path: Path) -> None:
    logits = _write(tmp_path / "fraud-mlp.onnx", mlp_onnx_bytes(40, 10, output_name="scores"))
    out = cli("models", "card", str(logits))
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert card["name"] == "fraud-mlp" and card["input_name"] == "x" and card["output_name"] == "scores"
    assert card["num_features"] == 40 and card["output_kind"] == "logits" and card["temperature"] == 1.0
    assert card["classes"] == list(range(10)) and "training" not in card
    assert "classes: none given; using 0..9 from the output width" in out.stderr
    assert "training.student: not given" in out.stderr

    probs = _write(tmp_path / "p.onnx", mlp_onnx_bytes(40, 3, softmax=True, output_name="probabilities"))
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n\nbird\n")
    card = json.loads(
        cli("models", "card", str(probs), "--classes-file", str(names), "--name", "pets").stdout
    )
    assert card["output_kind"] == "probabilities" and card["classes"] == ["cat", "dog", "bird"]
    assert card["name"] == "pets"

    # The values decide; a name that says otherwise is reported.
    misnamed = _write(tmp_path / "m.onnx", mlp_onnx_bytes(40, 3, softmax=True, output_name="logits"))
    out = cli("models", "card", str(misnamed), "--classes", "a,b,c")
    assert json.loads(out.stdout)["output_kind"] == "probabilities"
    assert "the name 'logits' suggests logits" in out.stderr


def test_the_student_factory_must_fit_the_weights(tmp_path: Path) -> None:
    from distill_engine.export import export_onnx
    from distill_engine.zoo import mlp

    model = export_onnx(mlp(40, 3, hidden=(16,)).eval(), 40, tmp_path / "student.onnx")
    fits = cli(
        "models", "card", str(model), "--classes", "a,b,c",
        "--student-factory", "distill_engine.zoo:mlp", "--student-kwargs", '{"hidden": [16]}',
    )  # fmt: skip
    assert fits.returncode == 0, fits.stderr
    assert json.loads(fits.stdout)["training"] == {
        "student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [16]}}
    }
    wrong = cli(
        "models", "card", str(model), "--classes", "a,b,c",
        "--student-factory", "distill_engine.zoo:mlp", "--student-kwargs", '{"hidden": [32]}',
    )  # fmt: skip
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: student-factory: ")
    assert "not the student's architecture" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--classes", "a,b"], "error: classes: 2 names given, the output 'logits' has 10 columns"),
        (["--classes", "a,a,b,c,d,e,f,g,h,i"], "error: card.classes: classes must be unique"),
        (["--student-kwargs", "{}"], "error: student-kwargs: needs --student-factory"),
        (["--student-factory", "mlp"], "error: student-factory: 'mlp' is not 'module:function'"),
        (
            ["--student-factory", "a:b", "--student-kwargs", "[1]"],
            "error: student-kwargs: must be a JSON object",
        ),
        (["--output", "nope"], "error: output: model has no output 'nope' (has ['logits'])"),
        (["--output-kind", "odds"], "error: output-kind: must be logits or probabilities"),
    ],
)
def test_bad_card_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    model = _write(tmp_path / "m.onnx", mlp_onnx_bytes(40, 10))
    out = cli("models", "card", str(model), *args)
    assert out.returncode == 1 and out.stderr.strip().startswith(message), out.stderr


def test_register_refuses_a_card_and_card_options_together(tmp_path: Path, model_files) -> None:
    model, card = model_files()
    out = cli("models", "register", str(model), "--card", str(card), "--classes", "a,b", "-c", "/dev/null")
    assert out.returncode == 1 and "--card is a full card" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_two_commands_from_an_onnx_file_to_a_served_monitored_student(tmp_path: Path, store_url: str) -> None:
    """`models register model.onnx --classes ... --activate`, then `serve`: no hand-written JSON."""
    student = _write(tmp_path / "student.onnx", mlp_onnx_bytes(40, 10, seed=0))
    teacher = _write(tmp_path / "teacher.onnx", mlp_onnx_bytes(40, 10, seed=1, softmax=True))
    port = free_port()
    config = tmp_path / "watchdog.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "store": {"url": store_url},
                "server": {"port": port, "admin_token": "operator-test-token"},
                "teachers": [{"name": "big", "kind": "onnx", "location": str(teacher)}],
                "sampling": {"rate": 1.0, "batch_wait_s": 0.05},
                "monitor": {"interval_s": 1.0, "min_rows": 50, "leader_poll_s": 0.2},
                "policy": {"max_runs_per_day": 0},
            }
        )
    )
    classes = ",".join(f"digit-{i}" for i in range(10))
    out = cli("models", "register", str(student), "--classes", classes, "--activate", "-c", str(config))
    assert out.returncode == 0, out.stderr
    version = out.stdout.strip()
    with DaemonProcess(config, port=port) as daemon:
        x = np.random.default_rng(3).normal(size=(120, 40)).astype(np.float32)
        answer = httpx.post(f"{daemon.url}/v1/predict", json={"inputs": x.tolist()}, timeout=30).json()
        assert answer["model_version"] == version
        expected = mlp_reference(x.astype(np.float64), mlp_weights(40, 10, seed=0)).argmax(1)
        assert (np.asarray(answer["predictions"]) == expected).mean() > 0.99

        def cycles() -> float:
            for line in httpx.get(f"{daemon.url}/metrics").text.splitlines():
                if line.startswith('watchdog_monitor_cycles_total{outcome="ok"}'):
                    return float(line.split()[1])
            return 0.0

        eventually(lambda: cycles() >= 1, timeout=120, what="a monitor cycle on the sampled rows")
        meta = httpx.get(f"{daemon.url}/v2/models/student").json()
        assert meta["versions"] == [version]
