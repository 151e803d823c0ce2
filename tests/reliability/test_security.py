"""Security: tokens, file paths, hostile weights, secrets kept out of logs and metrics."""

from __future__ import annotations

import base64
import json
import pickle

import httpx
import pytest

from distill_engine.errors import TeacherError
from distill_engine.job import TeacherSpec
from distill_engine.teachers import make_teacher

from support import DaemonProcess, ServerThread, free_port, mlp_onnx_bytes

TOKEN = "Zx-admin-9f3k2-q7w1"


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_torch_weights_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "teacher.pt"
    weights.write_bytes(pickle.dumps({"w": _Exploit(str(marker))}))
    spec = TeacherSpec(
        name="t",
        kind="torch",
        path=str(weights),
        factory="distill_engine.zoo:mlp",
        kwargs={"num_features": 4, "num_classes": 2},
    )
    with pytest.raises(TeacherError, match="cannot load"):
        make_teacher(spec).predict(__import__("numpy").zeros((1, 4), dtype="float32"))
    assert not marker.exists()


def test_card_names_and_versions_never_reach_the_file_system(make_settings, model_files):
    model, card = model_files()
    with ServerThread(make_settings(student={"model": str(model), "card": str(card)})) as srv:
        hostile = {
            "name": "../../../../tmp/evil",
            "input_name": "x",
            "output_name": "logits",
            "num_features": 40,
            "classes": list(range(10)),
            "version": "../../x",
        }
        body = {"model_base64": base64.b64encode(mlp_onnx_bytes(seed=3)).decode(), "card": hostile}
        r = httpx.post(
            srv.url + "/admin/models", json=body, headers={"Authorization": "Bearer s3cret-token-for-tests"}
        )
        assert r.status_code == 201
        assert r.json()["version"] != "../../x"
        files = sorted(p.name for p in srv.daemon.registry.models_dir.iterdir())
        assert all(len(name) == len("0" * 64 + ".onnx") and name.endswith(".onnx") for name in files)
        for path in ("/admin/models/..%2F..%2Fetc%2Fpasswd/activate", "/admin/models/%2e%2e/activate"):
            r = httpx.post(srv.url + path, headers={"Authorization": "Bearer s3cret-token-for-tests"})
            assert r.status_code == 404


@pytest.mark.slow
def test_secrets_stay_out_of_logs_and_metrics(pg_url, tmp_path, model_files, write_config):
    password = "hunter2-db-pass"
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    model, card = model_files()
    port = free_port()
    config = write_config(
        {
            "data_dir": str(tmp_path / "data"),
            "server": {"port": port, "admin_token": TOKEN},
            "store": {"url": url},
            "student": {"model": str(model), "card": str(card)},
        }
    )
    with DaemonProcess(config, port=port) as daemon:
        for auth in (f"Bearer {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
            httpx.get(daemon.url + "/admin/models", headers={"Authorization": auth})
        httpx.post(daemon.url + "/v1/predict", content=b"{bad")
        httpx.post(
            daemon.url + "/admin/models",
            headers={"Authorization": f"Bearer {TOKEN}"},
            content=json.dumps({"model_base64": "AAAA", "card": {}}),
        )
        exposition = httpx.get(daemon.url + "/metrics").text
        openapi = httpx.get(daemon.url + "/openapi.json").text
    log = daemon.log()
    for secret in (TOKEN, password):
        assert secret not in log and secret not in exposition and secret not in openapi
