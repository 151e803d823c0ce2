"""Security: tokens, file paths, hostile weights, secrets kept out of logs and metrics."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import socket
import stat
import subprocess

import httpx
import pytest

from distill_engine.errors import TeacherError
from distill_engine.job import TeacherSpec
from distill_engine.teachers import make_teacher

from support import CLI, DaemonProcess, ServerThread, free_port, mlp_onnx_bytes

TOKEN = "Zx-admin-9f3k2-q7w1"
ADMIN = {"Authorization": "Bearer s3cret-token-for-tests"}


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


# --- the admin token ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   ", "short-token-15ch"[:15]])
def test_empty_or_short_admin_tokens_are_refused_by_check_config(write_config, token) -> None:
    config = write_config({"server": {"admin_token": token}})
    out = subprocess.run([CLI, "check-config", str(config)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == (
        "server.admin_token: must be at least 16 characters (leave it unset to disable the admin API)\n"
    )


def test_an_empty_token_from_the_environment_stops_the_daemon_at_start(tmp_path, write_config) -> None:
    config = write_config({"data_dir": str(tmp_path / "data"), "server": {"port": free_port()}})
    env = {**os.environ, "WATCHDOG__SERVER__ADMIN_TOKEN": ""}
    for argv in ([CLI, "check-config", str(config)], [CLI, "serve", "--config", str(config)]):
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 2, argv
        assert out.stderr.strip().splitlines() == [
            "server.admin_token: must be at least 16 characters (leave it unset to disable the admin API)"
        ]


def _raw_get(port: int, path: str, authorization: str) -> bytes:
    """A GET with the header exactly as given (HTTP clients refuse trailing blanks in a value)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65_536):
            answer += chunk
    return answer


def test_a_bearer_with_nothing_after_it_never_authenticates(make_settings, model_files) -> None:
    model, card = model_files()
    with ServerThread(make_settings(student={"model": str(model), "card": str(card)})) as srv:
        for auth in ("Bearer", "bearer"):
            r = httpx.get(srv.url + "/admin/models", headers={"Authorization": auth})
            assert r.status_code == 401 and r.json() == {"error": "admin: missing or wrong bearer token"}
        for auth in ("Bearer ", "Bearer  ", "Bearer \t"):
            answer = _raw_get(srv.port, "/admin/models", auth)
            assert answer.startswith(b"HTTP/1.1 401") and b"missing or wrong bearer token" in answer


def test_without_a_token_the_admin_api_is_off_and_the_log_says_so(
    tmp_path, write_config, model_files
) -> None:
    model, card = model_files()
    port = free_port()
    config = write_config(
        {
            "data_dir": str(tmp_path / "data"),
            "server": {"port": port, "log_format": "text"},
            "student": {"model": str(model), "card": str(card)},
        }
    )
    with DaemonProcess(config, port=port) as daemon:
        r = httpx.get(daemon.url + "/admin/models", headers={"Authorization": "Bearer"})
        assert r.status_code == 401
        assert r.json() == {"error": "admin API disabled: server.admin_token is not set"}
    assert "admin API disabled (server.admin_token is not set)" in daemon.log()


# --- files an uploaded model or a child could reach ------------------------------------------------


def _external_data_model(folder) -> bytes:
    """A valid model whose weights point at a file beside the working directory (the attack: a
    relative `location` such as data_dir/run/settings-<pid>.json)."""
    import numpy as np
    import onnx
    from onnx import external_data_helper

    model = onnx.load_from_string(mlp_onnx_bytes())
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    onnx.save_model(model, str(folder / "model.onnx"))
    assert (folder / "weights.bin").exists() and np is not None
    return (folder / "model.onnx").read_bytes()


def test_models_with_external_data_are_refused(make_settings, model_files, tmp_path, monkeypatch) -> None:
    model, card = model_files()
    with ServerThread(make_settings(student={"model": str(model), "card": str(card)})) as srv:
        before = [i["version"] for i in httpx.get(srv.url + "/admin/models", headers=ADMIN).json()["models"]]
        raw = _external_data_model(tmp_path)
        monkeypatch.chdir(tmp_path)  # where ONNX Runtime would find weights.bin
        card_body = json.loads(card.read_text())
        body = {"model_base64": base64.b64encode(raw).decode(), "card": card_body}
        r = httpx.post(srv.url + "/admin/models", json=body, headers=ADMIN)
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(
            "model: tensor 'w1' keeps its data in an external file ('weights.bin')"
        )
        after = [i["version"] for i in httpx.get(srv.url + "/admin/models", headers=ADMIN).json()["models"]]
        assert after == before
        cli = subprocess.run(
            [CLI, "models", "register", str(tmp_path / "model.onnx"), "--card", str(card)],
            capture_output=True,
            text=True,
            env={**os.environ, "WATCHDOG__DATA_DIR": str(tmp_path / "cli-data")},
        )
        assert cli.returncode == 1 and "external file" in cli.stderr


def test_children_settings_file_is_private_and_holds_no_admin_token(make_settings, model_files) -> None:
    from distill_watchdog.loop.scheduler import Scheduler

    model, card = model_files()
    settings = make_settings(student={"model": str(model), "card": str(card)}, monitor={"interval_s": 3600})
    with ServerThread(settings, components=[Scheduler()]):
        (path,) = (settings.data_dir / "run").glob("settings-*.json")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        text = path.read_text()
        assert "s3cret-token-for-tests" not in text and "*****" not in text
        assert json.loads(text)["server"]["admin_token"] is None


def test_report_of_an_unknown_run_does_not_print_the_store_password(pg_url, write_config, tmp_path) -> None:
    password = "hunter2-db-pass"
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    config = write_config({"data_dir": str(tmp_path / "data"), "store": {"url": url}})
    out = subprocess.run(
        [CLI, "report", "nosuchrun", "--config", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert password not in out.stdout + out.stderr
    assert out.stderr.startswith("error: no run 'nosuchrun' in postgresql://postgres:***@")


# --- review pages ---------------------------------------------------------------------------------


def test_review_pages_refuse_framing_and_forms_from_other_origins(make_settings, model_files) -> None:
    from distill_watchdog.loop.scheduler import Scheduler

    model, card = model_files()
    settings = make_settings(student={"model": str(model), "card": str(card)}, monitor={"interval_s": 3600})
    with ServerThread(settings, components=[Scheduler()]) as srv:
        for path in ("/ui/", "/ui/runs"):
            page = httpx.get(srv.url + path)
            assert page.status_code == 200
            assert page.headers["x-frame-options"] == "DENY"
            csp = page.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
            # The one inline style block is allowed by its hash, nothing else inline.
            style = page.text.split("<style>", 1)[1].split("</style>", 1)[0]
            digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
            assert f"style-src 'sha256-{digest}'" in csp
        form = {"token": "s3cret-token-for-tests"}
        for origin in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Referer": "https://evil.example/x"},
        ):
            r = httpx.post(srv.url + "/ui/runs/abc123/approve", data=form, headers=origin)
            assert r.status_code == 403 and r.json()["error"].startswith("origin:")
        same = {"Origin": srv.url}
        r = httpx.post(srv.url + "/ui/runs/abc123/approve", data=form, headers=same)
        assert r.status_code == 409  # past the origin and the token: no such run awaits approval
        r = httpx.post(srv.url + "/ui/runs/abc123/approve", data={"token": "nope"}, headers=same)
        assert r.status_code == 401
