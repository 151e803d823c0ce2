"""Schemathesis against the daemon's own `/openapi.json`, on a real server over loopback.

Every operation of the document is fuzzed (schema-valid and schema-invalid bodies, path
parameters, headers), admin routes with the bearer token. The daemon runs with sampling on
(rate 1, a local ONNX teacher) so fuzzed requests also pass through `offer` and the worker;
runs triggered through the admin API use a training command that fails at once.
Checks: never a 5xx, every error body is `{"error": <str>}`, documented status codes and
content types, responses conform to the documented schemas.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from distill_watchdog import metrics

from support import ServerThread, free_port, write_model

TOKEN = "fuzz-admin-token"
# Examples per operation and mode: ~22 operations x 2 modes (GETs without parameters need one),
# about 3,000 cases in all.
EXAMPLES = int(os.environ.get("WATCHDOG_FUZZ_EXAMPLES", "100"))
SLOW_EXAMPLES = int(os.environ.get("WATCHDOG_FUZZ_SLOW_EXAMPLES", "2000"))
CASES: dict[str, int] = {}
INTERNAL_ERRORS_BEFORE: list[float] = []


def internal_errors() -> float:
    """`watchdog_internal_errors_total` summed over routes (answers of 500), in this process."""
    return sum(
        s.value
        for m in metrics.REGISTRY.collect()
        if m.name == "watchdog_internal_errors"
        for s in m.samples
        if s.name.endswith("_total")
    )


@schemathesis.check
def error_shape(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx/5xx answer is a JSON object with exactly one string field `error`."""
    if response.status_code < 400:
        return None
    try:
        body: Any = response.json()
    except Exception:
        body = None
    ok = isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)
    assert ok, f"error body is not {{'error': str}}: {response.status_code} {response.text[:300]}"
    return True


@schemathesis.check
def finite_probabilities(
    ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A 200 from predict or infer carries finite probabilities (never NaN serialized as null)."""
    if response.status_code != 200 or not case.path.endswith(("/predict", "/infer")):
        return None
    if not response.headers.get("content-type", [""])[0].startswith("application/json"):
        return None  # binary tensor extension
    body = response.json()
    rows = body["probabilities"] if "probabilities" in body else [body["outputs"][0]["data"]]
    values = [v for row in rows for v in row]
    assert all(isinstance(v, float | int) and math.isfinite(v) for v in values), f"not finite: {values[:10]}"
    return True


CHECKS = [
    not_a_server_error,
    error_shape,
    finite_probabilities,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
if os.environ.get("WATCHDOG_FUZZ_EXTRA"):
    from schemathesis.specs.openapi import checks as _c

    CHECKS += [
        _c.negative_data_rejection,
        _c.positive_data_acceptance,
        _c.unsupported_method,
        _c.ignored_auth,
        _c.missing_required_header,
        _c.response_headers_conformance,
    ]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The daemon with sampling on (rate 1) against a local ONNX teacher, on SQLite."""
    from distill_watchdog.config import load_settings
    from distill_watchdog.server import default_components

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    model, card = write_model(tmp / "src", "student")
    teacher, _ = write_model(tmp / "src", "teacher", seed=1, hidden=32)
    settings = load_settings(
        None,
        data_dir=str(tmp / "data"),
        server={"port": free_port(), "admin_token": TOKEN, "max_body_bytes": 65536},
        store={"url": f"sqlite:///{tmp / 'watchdog.db'}", "poll_interval_s": 0.5},
        student={"model": str(model), "card": str(card), "max_batch_delay_ms": 0.5},
        teachers=[
            {
                "name": "big",
                "kind": "onnx",
                "location": str(teacher),
                "options": {"output_kind": "logits", "version": "t1"},
            }
        ],
        sampling={"rate": 1.0, "queue_size": 256, "batch_size": 32},
        # POST /admin/runs starts a run per call: fuzzed, each must fail fast, not train.
        distill={"launcher": "command", "command": "false", "timeout_s": 30},
        monitor={"interval_s": 3600},
    )
    INTERNAL_ERRORS_BEFORE.append(internal_errors())
    with ServerThread(settings, components=default_components(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerThread) -> Any:
    """The document as the running daemon serves it (not the in-process one)."""
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def _operations() -> list[str]:
    import distill_watchdog.app  # noqa: F401 - registers the routes of every room
    from distill_watchdog.serving.openapi import document

    return [f"{m.upper()} {p}" for p, ops in document(None)["paths"].items() for m in ops]


OPERATIONS = _operations()
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def fuzz(server: ServerThread, api: Any, label: str, mode: GenerationMode, examples: int, seed: bool) -> None:
    """Runs `examples` generated cases of one operation through every check."""
    operation = api.find_operation_by_label(label)
    assert operation is not None, f"{label}: missing from the served /openapi.json"
    headers = {"Authorization": f"Bearer {TOKEN}"} if label.split(" ", 1)[1].startswith("/admin") else None
    ran = [0]
    session = requests.Session()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=seed,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        ran[0] += 1
        case.call_and_validate(
            base_url=server.url, session=session, headers=headers, checks=CHECKS, timeout=30
        )

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE and not ran[0]:
            pytest.skip(f"{label}: nothing in it can be made schema-invalid")
        raise
    finally:
        session.close()
    CASES[label] = CASES.get(label, 0) + ran[0]


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzz(fuzz_server: ServerThread, api_schema: Any, label: str, mode: GenerationMode) -> None:
    """No generated request, valid or not, gets a 5xx or an error body of another shape."""
    fuzz(fuzz_server, api_schema, label, mode, EXAMPLES, seed=True)


@pytest.mark.fuzz_long
@pytest.mark.skipif(
    not os.environ.get("WATCHDOG_FUZZ_LONG"), reason="tens of minutes: set WATCHDOG_FUZZ_LONG=1 to run"
)
@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzz_long(fuzz_server: ServerThread, api_schema: Any, label: str, mode: GenerationMode) -> None:
    """The same with 20x the cases and a fresh random seed (`WATCHDOG_FUZZ_LONG=1`)."""
    fuzz(fuzz_server, api_schema, label, mode, SLOW_EXAMPLES, seed=False)


# --- regressions: faults the fuzzer found, pinned as plain tests ---------------------------------


@pytest.mark.parametrize("value", [3e38, -3e38, 3.4028234663852886e38])
def test_overflowing_inputs_answer_422_not_nan(fuzz_server: ServerThread, value: float) -> None:
    """Finite float32 inputs that overflow inside the model: 422 naming the rows, not 200 with nulls."""
    ok_row = [0.5] * 40
    response = httpx.post(f"{fuzz_server.url}/v1/predict", json={"inputs": [ok_row, [value] * 40]})
    assert response.status_code == 422
    assert response.json() == {
        "error": "inputs: the model's output is not finite (NaN or infinity: inputs far outside the "
        "model's range?) for rows [1]"
    }
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 40], "data": [value] * 40}]}
    response = httpx.post(f"{fuzz_server.url}/v2/models/student/infer", json=body)
    assert response.status_code == 422
    assert set(response.json()) == {"error"}


def test_served_document_states_the_width_and_limits(fuzz_server: ServerThread) -> None:
    """The served /openapi.json describes what the daemon accepts (found by positive-data checks)."""
    schemas = httpx.get(f"{fuzz_server.url}/openapi.json").json()["components"]["schemas"]
    inputs = schemas["PredictRequest"]["properties"]["inputs"]
    assert inputs["items"]["minItems"] == inputs["items"]["maxItems"] == 40
    assert inputs["maxItems"] == 1024
    assert schemas["PredictRequest"]["additionalProperties"] is False
    assert schemas["FeedbackLabel"]["properties"]["id"]["maxLength"] == 128
    label = schemas["FeedbackLabel"]["properties"]["label"]
    assert (label["minimum"], label["maximum"]) == (0, 9)  # the active student's classes
    assert schemas["FeedbackRequest"]["properties"]["labels"]["maxItems"] == 10_000
    ids, slice_ = (schemas["PredictRequest"]["properties"][k]["anyOf"][0] for k in ("ids", "slice"))
    assert ids["uniqueItems"] is True
    assert slice_["propertyNames"]["pattern"] == "^[^=,]*$"
    assert slice_["additionalProperties"]["pattern"] == "^[^,]*$"
    assert schemas["UploadRequest"]["properties"]["card"] == {"$ref": "#/components/schemas/ModelCard"}


def test_fuzz_totals(fuzz_server: ServerThread) -> None:
    """Runs after the fuzzing above: no request answered 500, and the daemon still serves."""
    if not CASES:
        pytest.skip("counts cases of the fuzz tests run before it")
    missed = sorted(set(OPERATIONS) - set(CASES))
    print(f"fuzz cases: {sum(CASES.values())} over {len(CASES)} operations; not run: {missed}")
    assert httpx.get(f"{fuzz_server.url}/v2/health/ready").status_code == 200
    assert httpx.post(f"{fuzz_server.url}/v1/predict", json={"inputs": [[0.5] * 40]}).status_code == 200
    assert internal_errors() == INTERNAL_ERRORS_BEFORE[0]
