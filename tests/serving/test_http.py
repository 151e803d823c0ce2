"""The HTTP contract on a real server: predict, OIP v2, health, metrics, OpenAPI, error shapes."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from distill_engine.metrics import softmax

from support import ServerThread, mlp_onnx_bytes, mlp_reference, mlp_weights

TOKEN = {"Authorization": "Bearer s3cret-token-for-tests"}


@pytest.fixture
def server(make_settings, model_files):
    model, card = model_files()
    with ServerThread(
        make_settings(
            student={"model": str(model), "card": str(card)},
            server={"max_body_bytes": 200_000, "max_rows_per_request": 100},
        )
    ) as srv:
        yield srv


def rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 40)).astype(np.float32)


def test_predict_matches_reference_computation(server):
    x = rows(5)
    r = httpx.post(server.url + "/v1/predict", json={"inputs": x.tolist(), "ids": list("abcde")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = softmax(mlp_reference(x, mlp_weights(40, 10)))
    np.testing.assert_allclose(np.array(body["probabilities"]), expected, atol=1e-5)
    assert body["predictions"] == expected.argmax(1).tolist()
    assert body["ids"] == list("abcde")
    assert body["model_version"] == server.daemon.models.current.version


def test_predict_generates_ids_and_accepts_slice(server):
    r = httpx.post(server.url + "/v1/predict", json={"inputs": rows(3).tolist(), "slice": {"sensor": "a"}})
    assert r.status_code == 200
    ids = r.json()["ids"]
    assert len(ids) == 3 and len(set(ids)) == 3


def test_temperature_from_card_is_applied(make_settings, model_files):
    model, card = model_files(card_extra={"temperature": 3.0})
    with ServerThread(make_settings(student={"model": str(model), "card": str(card)})) as srv:
        x = rows(4)
        probs = np.array(
            httpx.post(srv.url + "/v1/predict", json={"inputs": x.tolist()}).json()["probabilities"]
        )
    np.testing.assert_allclose(probs, softmax(mlp_reference(x, mlp_weights(40, 10)) / 3.0), atol=1e-5)


BAD_PREDICT = [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"rows": []}', 422, "rows: unknown field"),
    (b'{"slice": {}}', 422, "inputs: required"),
    (b'{"inputs": []}', 422, "empty batch"),
    (b'{"inputs": [[1, 2, 3]]}', 422, "expected 40 values, got 3"),
    (b'{"inputs": [1, 2, 3]}', 422, "inputs[0]"),
    (json.dumps({"inputs": [[1.0] * 40, [1.0] * 39]}).encode(), 422, "inputs[1]: expected 40 values, got 39"),
    (json.dumps({"inputs": [["a"] * 40]}).encode(), 422, "must be numbers"),
    (json.dumps({"inputs": [[True] * 40]}).encode(), 422, "must be numbers"),
    (json.dumps({"inputs": [[None] * 40]}).encode(), 422, "must be numbers"),
    (b'{"inputs": [[' + b",".join([b"1e39"] * 40) + b"]]}", 422, "finite"),
    (b'{"inputs": [[' + b",".join([b"NaN"] * 40) + b"]]}", 400, "not valid JSON"),
    (b'{"inputs": [[' + b",".join([b"Infinity"] * 40) + b"]]}", 400, "not valid JSON"),
    (json.dumps({"inputs": [[0.0] * 40] * 101}).encode(), 413, "exceeds the limit of 100"),
    (json.dumps({"inputs": [[0.0] * 40], "ids": ["a", "b"]}).encode(), 422, "ids: 2 ids for 1 rows"),
    (json.dumps({"inputs": [[0.0] * 40], "ids": [7]}).encode(), 422, "ids:"),
    (json.dumps({"inputs": [[0.0] * 40], "slice": {"k": 1}}).encode(), 422, "slice.k"),
    (json.dumps({"inputs": [[0.0] * 40], "slice": ["k"]}).encode(), 422, "slice:"),
]


@pytest.mark.parametrize(("body", "status", "fragment"), BAD_PREDICT)
def test_bad_predict_bodies_get_4xx_naming_the_problem(server, body, status, fragment):
    r = httpx.post(server.url + "/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert fragment in r.json()["error"]
    # the daemon keeps serving
    assert httpx.post(server.url + "/v1/predict", json={"inputs": rows(1).tolist()}).status_code == 200


def test_body_over_the_limit_is_413_declared_or_streamed(server):
    big = b'{"inputs": [[' + b"0," * 150_000 + b"0]]}"
    r = httpx.post(server.url + "/v1/predict", content=big)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

    def chunks():
        for _ in range(30):
            yield b" " * 10_000

    r = httpx.post(server.url + "/v1/predict", content=chunks())  # chunked: no Content-Length
    assert r.status_code == 413


def test_unknown_route_and_method_are_json_errors(server):
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.delete(server.url + "/v2/health/live")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(server.url + "/v1/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_health_and_metadata(server):
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    meta = httpx.get(server.url + "/v2/models/student").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 40]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["versions"] == [server.daemon.models.current.version]
    assert httpx.get(server.url + "/v2/models/student/ready").json()["ready"] is True
    assert httpx.get(server.url + "/v2/models/other").status_code == 404
    assert httpx.get(server.url + "/v2").json()["name"] == "distill-watchdog"


def test_not_ready_without_a_model(make_settings):
    with ServerThread(make_settings()) as srv:
        assert httpx.get(srv.url + "/v2/health/live").status_code == 200
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 503
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": rows(1).tolist()})
        assert r.status_code == 503 and "no student" in r.json()["error"]


def test_standard_oip_v2_client_works_unchanged(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("student")
    meta = client.get_model_metadata("student")
    assert meta["inputs"][0]["shape"] == [-1, 40]
    x = rows(7)
    expected = softmax(mlp_reference(x, mlp_weights(40, 10)))
    for binary in (True, False):
        inp = triton.InferInput("x", [7, 40], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        for outputs in (None, [triton.InferRequestedOutput("probabilities", binary_data=binary)]):
            result = client.infer("student", [inp], outputs=outputs, request_id="r-1")
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
            response = result.get_response()
            assert response["model_version"] == server.daemon.models.current.version
            assert response["id"] == "r-1"
    client.close()


BAD_INFER = [
    ({"inputs": []}, "exactly one input"),
    ({"inputs": [{"name": "y", "shape": [1, 40], "datatype": "FP32", "data": [0.0] * 40}]}, "no input 'y'"),
    ({"inputs": [{"name": "x", "shape": [1, 40], "datatype": "INT64", "data": [0] * 40}]}, "expected FP32"),
    (
        {"inputs": [{"name": "x", "shape": [1, 39], "datatype": "FP32", "data": [0.0] * 39}]},
        "expected 40 features",
    ),
    (
        {"inputs": [{"name": "x", "shape": [2, 40], "datatype": "FP32", "data": [0.0] * 40}]},
        "40 values for shape",
    ),
    ({"inputs": [{"name": "x", "shape": [0, 40], "datatype": "FP32", "data": []}]}, "empty batch"),
    (
        {"inputs": [{"name": "x", "shape": [1, 40], "datatype": "FP32", "data": ["a"] * 40}]},
        "must be numbers",
    ),
    ({"inputs": [{"name": "x", "shape": "1,40", "datatype": "FP32", "data": [0.0] * 40}]}, "shape"),
    ({"inputs": [{"name": "x", "shape": [1, 40], "datatype": "FP32"}]}, "data: required"),
    ({"inputs": [{"name": "x", "shape": [1, 40], "datatype": "FP32", "data": [1e39] * 40}]}, "finite"),
    (
        {
            "inputs": [{"name": "x", "shape": [1, 40], "datatype": "FP32", "data": [0.0] * 40}],
            "outputs": [{"name": "logits"}],
        },
        "unknown output",
    ),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_INFER)
def test_bad_infer_requests_are_400(server, body, fragment):
    r = httpx.post(server.url + "/v2/models/student/infer", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_infer_binary_size_mismatch_is_400(server):
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 40], "datatype": "FP32", "parameters": {"binary_data_size": 160}}
            ]
        }
    ).encode()
    r = httpx.post(
        server.url + "/v2/models/student/infer",
        content=head + b"\0" * 100,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]
    r = httpx.post(
        server.url + "/v2/models/student/infer",
        content=head,
        headers={"Inference-Header-Content-Length": "99999"},
    )
    assert r.status_code == 400


def test_metrics_expose_contract_series(server):
    httpx.post(server.url + "/v1/predict", json={"inputs": rows(2).tolist()})
    httpx.post(server.url + "/v1/predict", content=b"{")
    text = httpx.get(server.url + "/metrics").text
    version = server.daemon.models.current.version
    assert 'watchdog_requests_total{code="200",route="/v1/predict"}' in text
    assert 'watchdog_requests_total{code="400",route="/v1/predict"}' in text
    assert "watchdog_request_duration_seconds_bucket" in text
    assert "watchdog_batch_size_bucket" in text
    assert f'watchdog_model_info{{version="{version}"}} 1.0' in text
    assert "s3cret-token-for-tests" not in text


def test_openapi_lists_every_route(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/v1/predict",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/metrics",
        "/admin/models",
        "/admin/models/{version}/activate",
        "/admin/models/rollback",
    ):
        assert path in doc["paths"], path
    for schema in doc["components"]["schemas"].values():
        assert "$defs" not in schema


# --- admin --------------------------------------------------------------------------------


def test_admin_needs_the_token(server):
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret-token-for-tests"},
        {"Authorization": "s3cret-token-for-tests"},
    ):
        r = httpx.get(server.url + "/admin/models", headers=headers)
        assert r.status_code == 401 and "error" in r.json()
    assert httpx.post(server.url + "/admin/models/rollback").status_code == 401
    assert httpx.get(server.url + "/admin/models", headers=TOKEN).status_code == 200


def test_admin_disabled_without_a_configured_token(make_settings, model_files):
    model, card = model_files()
    settings = make_settings(student={"model": str(model), "card": str(card)}, server={"admin_token": None})
    with ServerThread(settings) as srv:
        r = httpx.get(srv.url + "/admin/models", headers=TOKEN)
        assert r.status_code == 401 and "disabled" in r.json()["error"]


def test_admin_upload_activate_and_rollback(server):
    first = server.daemon.models.current.version
    card = {
        "name": "v2",
        "input_name": "x",
        "output_name": "logits",
        "num_features": 40,
        "classes": list(range(10)),
    }
    files = {
        "model": ("m.onnx", mlp_onnx_bytes(seed=5), "application/octet-stream"),
        "card": ("card.json", json.dumps(card), "application/json"),
    }
    r = httpx.post(server.url + "/admin/models", files=files, headers=TOKEN)
    assert r.status_code == 201, r.text
    second = r.json()["version"]
    assert second != first and r.json()["active"] is False
    r = httpx.post(f"{server.url}/admin/models/{second}/activate", headers=TOKEN, json={"reason": "test"})
    assert r.json() == {"active": second}
    assert (
        httpx.post(server.url + "/v1/predict", json={"inputs": rows(1).tolist()}).json()["model_version"]
        == second
    )
    listing = httpx.get(server.url + "/admin/models", headers=TOKEN).json()
    assert listing["active"] == second and {m["version"] for m in listing["models"]} == {first, second}
    r = httpx.post(server.url + "/admin/models/rollback", headers=TOKEN)
    assert r.json() == {"active": first}
    assert (
        httpx.post(server.url + "/v1/predict", json={"inputs": rows(1).tolist()}).json()["model_version"]
        == first
    )
    r = httpx.post(server.url + "/admin/models/rollback", headers=TOKEN)
    assert r.status_code == 409 and "no earlier" in r.json()["error"]
    # JSON upload with activate
    body = {"model_base64": base64.b64encode(mlp_onnx_bytes(seed=9)).decode(), "card": card, "activate": True}
    r = httpx.post(server.url + "/admin/models", json=body, headers=TOKEN)
    assert r.status_code == 201 and r.json()["active"] is True


BAD_UPLOADS = [
    (b"not an onnx file", None, "cannot load"),
    (mlp_onnx_bytes(num_features=39), None, "card.num_features: card says 40, model input has 39"),
    (mlp_onnx_bytes(num_classes=5), None, "card.classes"),
    (mlp_onnx_bytes(input_name="features"), None, "card.input_name"),
    (mlp_onnx_bytes(), {"num_features": -1}, "card.num_features"),
    (mlp_onnx_bytes(), {"classes": [1, 1]}, "card.classes"),
    (mlp_onnx_bytes(fixed_batch=1), None, "warm-up"),
]


@pytest.mark.parametrize(("model_bytes", "card_patch", "fragment"), BAD_UPLOADS)
def test_bad_models_are_refused_and_serving_continues(server, model_bytes, card_patch, fragment):
    before = server.daemon.models.current.version
    card = {
        "name": "bad",
        "input_name": "x",
        "output_name": "logits",
        "num_features": 40,
        "classes": list(range(10)),
        **(card_patch or {}),
    }
    body = {"model_base64": base64.b64encode(model_bytes).decode(), "card": card, "activate": True}
    r = httpx.post(server.url + "/admin/models", json=body, headers=TOKEN)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]
    r = httpx.post(server.url + "/v1/predict", json={"inputs": rows(1).tolist()})
    assert r.status_code == 200 and r.json()["model_version"] == before
    assert "watchdog_model_rejections_total" in httpx.get(server.url + "/metrics").text


def test_activate_unknown_or_malformed_version(server):
    r = httpx.post(server.url + "/admin/models/0123456789abcdef/activate", headers=TOKEN)
    assert r.status_code == 404 and "no model version" in r.json()["error"]
    r = httpx.post(server.url + "/admin/models/..%2F..%2Fetc/activate", headers=TOKEN)
    assert r.status_code == 404


def test_admin_upload_limits(server):
    r = httpx.post(
        server.url + "/admin/models", content=b"{", headers={**TOKEN, "content-type": "application/json"}
    )
    assert r.status_code == 400
    r = httpx.post(server.url + "/admin/models", json={"model_base64": "%%%", "card": {}}, headers=TOKEN)
    assert r.status_code == 422 and "base64" in r.json()["error"]
