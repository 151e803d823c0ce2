"""Teacher adapters against real ONNX Runtime, real torch files and real HTTP on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from distill_engine.errors import TeacherError
from distill_engine.job import TeacherSpec
from distill_engine.teachers import make_teacher, predict_all

from .helpers import D, blobs, teacher_onnx, train_teacher


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return teacher_onnx(tmp_path_factory.mktemp("t") / "teacher.onnx")


def test_onnx_teacher_probs_version_and_intermediates(onnx_path: Path) -> None:
    t = make_teacher(TeacherSpec(name="t", kind="onnx", path=str(onnx_path)))
    x, _ = blobs(50, 3)
    out = t.predict(x)
    assert out.probs.shape == (50, 3) and np.allclose(out.probs.sum(1), 1)
    assert len(out.version) == 12  # content hash when no version is pinned
    relu = [n.output[0] for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Relu"]
    out2 = t.predict(x, intermediates=[relu[0]])
    assert out2.intermediates[relu[0]].shape == (50, 32)
    assert np.allclose(out2.probs, out.probs)
    assert t.num_params() == sum(p.numel() for p in train_teacher().parameters())
    with pytest.raises(TeacherError, match="no ONNX value"):
        t.predict(x, intermediates=["nope"])


def test_onnx_teacher_missing_file_is_teacher_error(tmp_path: Path) -> None:
    t = make_teacher(TeacherSpec(name="gone", kind="onnx", path=str(tmp_path / "x.onnx")))
    with pytest.raises(TeacherError, match="cannot read"):
        t.predict(np.zeros((1, D), np.float32))


def test_torch_teacher_state_dict_and_torchscript(tmp_path: Path) -> None:
    model = train_teacher()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.jit.script(model).save(str(tmp_path / "m.ts"))
    x, _ = blobs(20, 4)
    spec = TeacherSpec(
        name="sd",
        kind="torch",
        path=str(tmp_path / "w.pt"),
        factory="distill_engine.zoo:mlp",
        kwargs={"num_features": D, "num_classes": 3, "hidden": [32, 32]},
        output_kind="logits",
    )
    a = make_teacher(spec).predict(x, intermediates=["body.1"])
    b = make_teacher(
        TeacherSpec(name="ts", kind="torch", path=str(tmp_path / "m.ts"), output_kind="logits")
    ).predict(x)
    with torch.no_grad():
        ref = torch.softmax(model(torch.as_tensor(x)), 1).numpy()
    assert np.allclose(a.probs, ref, atol=1e-6) and np.allclose(b.probs, ref, atol=1e-6)
    assert a.intermediates["body.1"].shape == (20, 32)


class _Server:
    """A loopback OIP v2 + plain JSON teacher server backed by a real ONNX teacher."""

    def __init__(self, onnx_path: Path) -> None:
        teacher = make_teacher(TeacherSpec(name="srv", kind="onnx", path=str(onnx_path)))
        self.version = "v7"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v2/models/big/infer":
                    inp = body["inputs"][0]
                    x = np.asarray(inp["data"], np.float32).reshape(inp["shape"])
                    p = teacher.predict(x).probs
                    doc = {
                        "model_name": "big",
                        "model_version": server.version,
                        "outputs": [
                            {
                                "name": "probabilities",
                                "shape": list(p.shape),
                                "datatype": "FP32",
                                "data": p.ravel().tolist(),
                            }
                        ],
                    }
                    headers = {}
                elif self.path == "/json":
                    x = np.asarray(body["payload"]["rows"], np.float32)
                    doc = {"result": {"scores": teacher.predict(x).probs.tolist()}}
                    headers = {"X-Model-Version": "h3"}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                raw = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        server = self
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture(scope="module")
def server(onnx_path: Path) -> Iterator[_Server]:
    s = _Server(onnx_path)
    yield s
    s.httpd.shutdown()


def test_http_v2_teacher(server: _Server, onnx_path: Path) -> None:
    t = make_teacher(TeacherSpec(name="h", kind="http-v2", url=server.url, model_name="big", timeout_s=5))
    x, _ = blobs(30, 5)
    out, versions = predict_all(t, x, batch_size=8)
    local = make_teacher(TeacherSpec(name="l", kind="onnx", path=str(onnx_path))).predict(x).probs
    assert np.allclose(out.probs, local, atol=1e-6)
    assert out.version == "v7" and set(versions) == {"v7"}
    server.version = "v8"  # a hosted teacher changing under us shows up per row
    assert t.predict(x[:2]).version == "v8"
    server.version = "v7"
    t.close()


def test_http_json_teacher_template_paths_and_header(server: _Server) -> None:
    spec = TeacherSpec(
        name="j",
        kind="http-json",
        url=f"{server.url}/json",
        request_template={"payload": {"rows": "{{inputs}}", "fmt": "dense"}},
        probabilities_path="result.scores",
        version_header="X-Model-Version",
    )
    out = make_teacher(spec).predict(blobs(5, 6)[0])
    assert out.probs.shape == (5, 3) and out.version == "h3"


def test_http_errors_are_teacher_errors(server: _Server) -> None:
    bad = make_teacher(TeacherSpec(name="b", kind="http-v2", url=server.url, model_name="nope", timeout_s=2))
    with pytest.raises(TeacherError, match="404"):
        bad.predict(np.zeros((1, D), np.float32))
    wrong_path = make_teacher(
        TeacherSpec(
            name="w",
            kind="http-json",
            url=f"{server.url}/json",
            request_template={"payload": {"rows": "{{inputs}}"}},
            probabilities_path="result.missing",
        )
    )
    with pytest.raises(TeacherError, match="cannot read response"):
        wrong_path.predict(np.zeros((1, D), np.float32))
    with pytest.raises(TeacherError, match="intermediates"):
        wrong_path.predict(np.zeros((1, D), np.float32), intermediates=["x"])
