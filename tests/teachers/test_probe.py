"""Teachers that validate but cannot answer: refused by check-config, found by `--probe`, and
logits read as probabilities named with the fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from distill_engine.errors import TeacherError
from distill_engine.job import TeacherSpec
from distill_engine.teachers import make_teacher

from .fake_teacher import FakeTeacher
from support import CLI, free_port, mlp_onnx_bytes, mlp_reference, mlp_weights, write_model


def _check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "check-config", str(config), *extra], capture_output=True, text=True, timeout=120
    )


def test_an_http_v2_base_url_without_model_name_is_refused(write_config) -> None:
    config = write_config(
        {"teachers": [{"name": "big", "kind": "http-v2", "location": "http://teacher:8000"}]}
    )
    out = _check(config)
    assert out.returncode == 2
    assert out.stderr == (
        "teachers.big.options: kind http-v2 needs 'model_name' when the URL is a base URL "
        "(or give the whole URL, ending in /v2/models/<name>/infer)\n"
    )
    for location in ("http://teacher:8000/v2/models/big/infer", "http://t/v2/models/big/versions/3/infer"):
        config = write_config({"teachers": [{"name": "big", "kind": "http-v2", "location": location}]})
        assert _check(config).returncode == 0, location


def test_probe_reports_each_teacher_and_fails_with_one_line_per_bad_one(write_config, model_files) -> None:
    model, card = model_files()
    dead = f"http://127.0.0.1:{free_port()}"
    with FakeTeacher(version="v7") as teacher:
        good = {"name": "big", "kind": "http-v2", "location": teacher.url, "options": {"model_name": "big"}}
        full = {"name": "full", "kind": "http-v2", "location": f"{teacher.url}/v2/models/big/infer"}
        config = write_config({"student": {"model": str(model), "card": str(card)}, "teachers": [good, full]})
        out = _check(config, "--probe")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("big: ok, kind http-v2, version v7, output shape [1, 10], metadata:")
        assert lines[1].startswith("full: ok, kind http-v2, version v7, output shape [1, 10]")
        assert lines[-1].endswith(": ok")
        assert teacher.rows == 2  # one row of zeros each

        down = {"name": "down", "kind": "http-v2", "location": dead, "options": {"model_name": "big"}}
        teacher.mode = "garbage"
        config = write_config({"teachers": [good, down]}, name="bad.yaml")
        out = _check(config, "--probe", "--width", "40")
        assert out.returncode == 2
        errors = out.stderr.splitlines()
        assert len(errors) == 2
        assert errors[0].startswith(
            "teachers.big: probe failed (http-v2): teacher big: malformed OIP v2 response"
        )
        assert errors[1].startswith("teachers.down: probe failed (http-v2): teacher down: ConnectError")


def test_probe_needs_a_width(write_config) -> None:
    config = write_config({"teachers": [{"name": "t", "kind": "onnx", "location": "t.onnx"}]})
    out = _check(config, "--probe")
    assert out.returncode == 2
    assert out.stderr == "student.card: needed by --probe for the width of a row (or pass --width)\n"


def _onnx_teacher(folder: Path, output_name: str, softmax: bool) -> Path:
    path = folder / f"teacher-{output_name}-{softmax}.onnx"
    path.write_bytes(mlp_onnx_bytes(output_name=output_name, softmax=softmax))
    return path


def test_an_onnx_teacher_of_logits_with_the_default_kind_names_the_fix(tmp_path, write_config) -> None:
    x = np.random.default_rng(0).normal(size=(4, 40)).astype(np.float32)
    scores = _onnx_teacher(tmp_path, "scores", softmax=False)
    with pytest.raises(
        TeacherError, match=r"not probabilities \(negative values\); .*set `output_kind: logits`"
    ):
        make_teacher(TeacherSpec(name="t", kind="onnx", path=str(scores))).predict(x)
    # `--probe` says the same, per teacher.
    model, card = write_model(tmp_path / "student")
    config = write_config(
        {
            "student": {"model": str(model), "card": str(card)},
            "teachers": [{"name": "t", "kind": "onnx", "location": str(scores)}],
        }
    )
    out = _check(config, "--probe")
    assert out.returncode == 2 and "set `output_kind: logits`" in out.stderr

    expected = mlp_reference(x, mlp_weights(40, 10))
    expected = np.exp(expected - expected.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    # An output named `logits` with logits in it: read as logits.
    named = make_teacher(
        TeacherSpec(name="t", kind="onnx", path=str(_onnx_teacher(tmp_path, "logits", False)))
    )
    np.testing.assert_allclose(named.predict(x).probs, expected, atol=1e-5)
    # Named `logits` but holding probabilities (a softmax exported under that name): probabilities.
    softmaxed = make_teacher(
        TeacherSpec(name="t", kind="onnx", path=str(_onnx_teacher(tmp_path, "logits", True)))
    )
    np.testing.assert_allclose(softmaxed.predict(x).probs, expected, atol=1e-5)
    # A kind given explicitly is obeyed.
    explicit = TeacherSpec(
        name="t", kind="onnx", path=str(_onnx_teacher(tmp_path, "logits", False)), output_kind="probabilities"
    )
    with pytest.raises(TeacherError, match="set `output_kind: logits`"):
        make_teacher(explicit).predict(x)
