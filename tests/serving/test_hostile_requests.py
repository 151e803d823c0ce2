"""What a hostile or careless caller sends: oversize bodies on every route, guessable and duplicate
ids, out-of-range labels, label floods, slice text that reads back as another slice, and a model
whose outputs are not probabilities. Real daemon, real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import math
import select
import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest
from sqlalchemy import event

from support import ServerThread, card_for, recent_samples, write_model

TOKEN = {"Authorization": "Bearer s3cret-token-for-tests"}
LIMIT = 20_000
UPLOAD_LIMIT = 50_000


@pytest.fixture
def server(make_settings, model_files):
    model, card = model_files()
    settings = make_settings(
        student={"model": str(model), "card": str(card)},
        server={"max_body_bytes": LIMIT, "max_upload_bytes": UPLOAD_LIMIT, "max_feedback_labels": 50},
    )
    with ServerThread(settings) as srv:
        yield srv


def _push_until_answered(
    port: int, path: str, total: int, extra: str = "", content_type: str = "application/x-www-form-urlencoded"
) -> tuple[int, bytes]:
    """POSTs a chunked body of up to `total` bytes over a raw socket, a chunk at a time, until the
    daemon answers; returns (bytes sent by then, the answer's status line)."""
    chunk = b"x" * 65_536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    # A multipart body opens with a well-formed part, so that only its size can be refused
    # (a parser handed a bad first chunk would rightly answer 400 before the limit).
    part = (
        b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n\r\n'
        if content_type.startswith("multipart/")
        else b""
    )
    opening = b"%x\r\n" % len(part) + part + b"\r\n" if part else b""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: {content_type}\r\n{extra}\r\n".encode()
            + opening
        )
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(frame)
                sent += len(chunk)
        except OSError:  # the daemon answered and closed, or stopped reading
            pass
        return sent, sock.recv(65_536).split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/feedback",
        "/admin/models/0123456789abcdef/activate",
        "/admin/models",  # multipart or JSON, within server.max_upload_bytes
        "/ui/runs/abc/approve",
        "/v1/predict",
        "/v2/models/student/infer",
    ],
)
def test_every_body_is_capped_before_it_is_read(server, path) -> None:
    """Declared or streamed, an oversize body is refused (413) whatever the route (the admin API
    with its token; the UI's form holds its token in the body: refused before it is known); a
    600 MB stream is answered after about the limit, not read in full."""
    headers = TOKEN if path.startswith("/admin") else {}
    declared = httpx.post(server.url + path, content=b"x" * (UPLOAD_LIMIT + 1), headers=headers)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"].startswith("body:")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=b"):
        sent, status = _push_until_answered(server.port, path, 600 * 2**20, extra, content_type)
        assert status == b"HTTP/1.1 413 Request Entity Too Large"
        assert sent < 32 * 2**20  # the limit plus what socket buffers took; read in full, it was 600 MB
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


def test_generated_ids_are_random_and_client_ids_unique(server) -> None:
    ids = []
    for seed in range(20):
        x = np.random.default_rng(seed).normal(size=(5, 40)).tolist()
        ids += httpx.post(server.url + "/v1/predict", json={"inputs": x}).json()["ids"]
    assert len(set(ids)) == len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # 128 random bits each: no shared prefix (a per-process prefix and a counter had 16 digits in common).
    assert len({i[:4] for i in ids}) > 90
    ones = np.array([[int(c, 16) >> b & 1 for c in i for b in range(4)] for i in ids])
    assert 0.4 < ones.mean() < 0.6 and ones.mean(axis=0).min() > 0.2  # no fixed bit position

    dup = httpx.post(server.url + "/v1/predict", json={"inputs": [[0.1] * 40] * 2, "ids": ["a", "a"]})
    assert dup.status_code == 422 and dup.json()["error"].startswith("ids: must be unique")


def test_ids_differ_in_a_forked_worker() -> None:
    """Workers are forked: each must draw its own ids, not repeat its parent's buffer."""
    code = (
        "import os\n"
        "from distill_watchdog.serving.validation import new_ids\n"
        "new_ids(1)\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, new_ids(1)[0].encode()); os._exit(0)\n"
        "os.wait(); print(os.read(r, 64).decode(), new_ids(1)[0])\n"
    )
    child, parent = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    ).stdout.split()
    assert child != parent


@pytest.mark.parametrize(
    ("slice_", "fragment"),
    [
        ({"region": "eu,us"}, "slice.region: keys must be non-empty without '=' or ',', values without ','"),
        ({"a=b": "x"}, "slice.a=b:"),
        ({"a,b": "x"}, "slice.a,b:"),
        ({"": "x"}, "slice.:"),
    ],
)
def test_slice_text_that_would_read_back_as_other_slices_is_refused(server, slice_, fragment) -> None:
    r = httpx.post(server.url + "/v1/predict", json={"inputs": [[0.1] * 40], "slice": slice_})
    assert r.status_code == 422 and r.json()["error"].startswith(fragment), r.text
    ok = httpx.post(server.url + "/v1/predict", json={"inputs": [[0.1] * 40], "slice": {"region": "eu=west"}})
    assert ok.status_code == 200


def test_feedback_labels_must_be_classes_of_the_active_student(server) -> None:
    for bad in (10, -1, 2**31 - 1):
        body = {"labels": [{"id": "a", "label": 1}, {"id": "b", "label": bad}]}
        r = httpx.post(server.url + "/v1/feedback", json=body)
        assert r.status_code == 422
        assert r.json()["error"].startswith("labels[1].label: must be a class index, an integer from 0 to 9")
    ok = httpx.post(server.url + "/v1/feedback", json={"labels": [{"id": "a", "label": 9}]})
    assert ok.status_code == 200 and ok.json() == {"accepted": 0, "unknown_ids": ["a"]}


def test_feedback_is_capped_per_request(server) -> None:
    body = {"labels": [{"id": f"r{i}", "label": 1} for i in range(51)]}
    r = httpx.post(server.url + "/v1/feedback", json=body)
    assert r.status_code == 413
    assert r.json()["error"] == "labels: 51 labels exceeds the limit of 50 (server.max_feedback_labels)"


def test_many_labels_are_one_statement_per_chunk(make_settings, model_files) -> None:
    """30,000 labels in one request: a few UPDATE statements, not one per label."""
    from support import SampleRecord, add_samples

    model, card = model_files()
    settings = make_settings(
        student={"model": str(model), "card": str(card)},
        server={"max_feedback_labels": 30_001, "max_body_bytes": 4 * 2**20},
    )
    with ServerThread(settings) as srv:
        store = srv.daemon.store
        n = 30_000
        add_samples(
            store, [SampleRecord(f"s{i}", f"r{i}", 1.0, [0.0], [1.0], "v", {}, False, {}) for i in range(n)]
        )
        updates: list[str] = []

        def count(conn, cursor, statement, *args) -> None:
            if statement.lstrip().upper().startswith(("UPDATE", "WITH")):
                updates.append(statement)

        event.listen(store.db.engine, "before_cursor_execute", count)
        try:
            labels = [{"id": f"r{i}", "label": i % 10} for i in range(n)] + [{"id": "nope", "label": 0}]
            r = httpx.post(srv.url + "/v1/feedback", json={"labels": labels}, timeout=120)
        finally:
            event.remove(store.db.engine, "before_cursor_execute", count)
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": n, "unknown_ids": ["nope"]}
        assert len(updates) == math.ceil(len(labels) / 5000)
        got = {row["request_id"]: row["label"] for row in recent_samples(store, n)}
        assert all(got[f"r{i}"] == i % 10 for i in range(n))


def test_large_finite_outputs_name_the_rows_and_the_check(make_settings, tmp_path) -> None:
    """A card saying `probabilities` for a linear model: finite but huge outputs for some rows.
    The answer names those rows and what failed, where it said "not finite for rows []"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((40, 10), np.float32)
    w[0, :] = 1e18  # feature 0 drives every output far past 1
    b = np.full(10, 0.1, np.float32)  # zeros in (the warm-up): valid probabilities out
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["probs"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 40])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "linear.onnx"
    onnx.save(model, path)
    card = tmp_path / "linear.card.json"
    card.write_text(__import__("json").dumps(card_for(output_name="probs", output_kind="probabilities")))
    with ServerThread(make_settings(student={"model": str(path), "card": str(card)})) as srv:
        rows = [[0.0] * 40, [10.0] + [0.0] * 39, [0.0] * 40]
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": rows})
        assert r.status_code == 422
        assert r.json()["error"] == (
            "inputs: the model's output is outside [0, 1] (not probabilities: does the card's "
            "output_kind match the model?) for rows [1]"
        )
        assert httpx.post(srv.url + "/v1/predict", json={"inputs": [[0.0] * 40]}).status_code == 200


def test_a_card_saying_probabilities_for_logits_is_refused_at_registration(server, tmp_path) -> None:
    model, card = write_model(tmp_path, card_extra={"output_kind": "probabilities"})  # outputs logits
    from distill_watchdog.errors import ModelRejectedError

    with pytest.raises(
        ModelRejectedError, match="card.output_kind: the model's outputs are not probabilities"
    ):
        server.daemon.registry.register_files(model, card)
