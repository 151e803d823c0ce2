"""Shadow traffic end to end: real daemon, real OIP v2 teacher on loopback, SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from distill_watchdog.server import default_components

from .helpers import ADMIN, counter, daemon_settings, eventually, predict, sample_count, teacher_config
from support import ServerThread, recent_samples
from teachers.fake_teacher import FakeTeacher


@pytest.fixture
def teacher():
    with FakeTeacher(version="v1") as t:
        yield t


def _serve(settings):
    return ServerThread(settings, default_components(settings))


def test_sampled_rows_are_stored_with_teacher_outputs_and_feedback_joins_labels(
    make_settings, model_files, teacher: FakeTeacher
) -> None:
    settings = daemon_settings(make_settings, model_files, [teacher_config(teacher.url)])
    stored_before = sample_count("stored")
    with _serve(settings) as server:
        answers = [predict(server.url, rows=4, seed=s, slice={"region": "eu"}) for s in range(3)]
        store = server.daemon.store
        eventually(lambda: store.count_samples() == 12, what="12 stored samples")
        rows = recent_samples(store, 100)
        by_id = {r["request_id"]: r for r in rows}
        first = answers[0]
        row = by_id[first["ids"][0]]
        assert row["student_version"] == first["model_version"]
        np.testing.assert_allclose(row["student_probs"], first["probabilities"][0], atol=1e-6)
        assert row["slices"] == {"region": "eu"}
        out = row["teachers"]["big"]
        assert out["version"] == "v1" and not out["quarantined"]
        np.testing.assert_allclose(
            out["probs"], teacher.probs(np.asarray([row["features"]], np.float32))[0], atol=1e-5
        )
        eventually(lambda: sample_count("stored") - stored_before == 12, what="stored counted")

        ids = first["ids"][:2]
        reply = httpx.post(
            f"{server.url}/v1/feedback",
            json={
                "labels": [
                    {"id": ids[0], "label": 3},
                    {"id": ids[1], "label": 1},
                    {"id": "never-seen", "label": 0},
                ]
            },
        )
        assert reply.status_code == 200
        assert reply.json() == {"accepted": 2, "unknown_ids": ["never-seen"]}
        labelled = {r["request_id"]: r["label"] for r in recent_samples(store, 100)}
        assert labelled[ids[0]] == 3 and labelled[ids[1]] == 1

        bad = httpx.post(f"{server.url}/v1/feedback", json={"labels": [{"id": "x", "label": "cat"}]})
        assert bad.status_code == 422 and "labels[0].label" in bad.json()["error"]
        assert httpx.post(f"{server.url}/v1/feedback", content=b"{").status_code == 400

        metrics_text = httpx.get(f"{server.url}/metrics").text
        assert 'watchdog_teacher_version_info{pinned="true",teacher="big",version="v1"} 1.0' in metrics_text


def test_serving_survives_a_slow_garbled_and_dead_teacher(
    make_settings, model_files, teacher: FakeTeacher
) -> None:
    cfg = teacher_config(teacher.url, timeout_s=0.2, retries=0, circuit_failures=2, circuit_reset_s=60)
    settings = daemon_settings(make_settings, model_files, [cfg])
    errors_before = sample_count("teacher_error")
    with _serve(settings) as server:
        teacher.mode = "garbage"
        predict(server.url, rows=2)
        eventually(
            lambda: counter("watchdog_teacher_requests_total", teacher="big", outcome="invalid") >= 1,
            what="invalid answer counted",
        )
        teacher.mode, teacher.delay_s = "ok", 1.0
        predict(server.url, rows=2, seed=1)
        eventually(
            lambda: counter("watchdog_teacher_requests_total", teacher="big", outcome="timeout") >= 1,
            what="timeout counted",
        )
        teacher.stop()
        for seed in range(5):  # every prediction still answered while the teacher is dead
            predict(server.url, rows=2, seed=seed)
        eventually(lambda: counter("watchdog_teacher_circuit_open", teacher="big") == 1, what="circuit open")
        eventually(
            lambda: counter("watchdog_teacher_requests_total", teacher="big", outcome="circuit_open") >= 1,
            what="fail-fast counted",
        )
        eventually(
            lambda: server.daemon.store.count_samples() == 14, what="rows stored without teacher output"
        )
        eventually(lambda: sample_count("teacher_error") - errors_before == 14, what="teacher errors counted")
        status = httpx.get(f"{server.url}/admin/teachers", headers=ADMIN).json()
        assert status["teachers"][0]["circuit_open"] is True


def test_full_queue_drops_and_counts(make_settings, model_files, teacher: FakeTeacher) -> None:
    teacher.delay_s = 0.5
    settings = daemon_settings(
        make_settings,
        model_files,
        [teacher_config(teacher.url)],
        sampling={"queue_size": 2, "batch_size": 1, "concurrency": 1},
    )
    dropped_before = sample_count("dropped")
    with _serve(settings) as server:
        predict(server.url, rows=20)
        assert sample_count("dropped") - dropped_before >= 17  # one in flight, two queued at most
        assert counter("watchdog_sample_queue_depth") <= 2


def test_per_slice_rates_oversample_a_slice(make_settings, model_files, teacher: FakeTeacher) -> None:
    settings = daemon_settings(
        make_settings,
        model_files,
        [teacher_config(teacher.url)],
        sampling={"rate": 0.0, "per_slice": {"region=eu": 1.0, "x0=high": 1.0}},
        slices={
            "keys": ["region"],
            "bins": [{"name": "x0", "feature": 0, "edges": [10.0], "labels": ["low", "high"]}],
        },
    )
    with _serve(settings) as server:
        predict(server.url, rows=5, slice={"region": "us"})
        predict(server.url, rows=3, slice={"region": "eu", "tenant": "a"})
        big = np.zeros((2, 40)).tolist()
        big[0][0] = 50.0
        assert httpx.post(f"{server.url}/v1/predict", json={"inputs": big}).status_code == 200
        store = server.daemon.store
        eventually(lambda: store.count_samples() == 4, what="3 eu rows + 1 high-x0 row")
        slices = sorted(tuple(sorted(r["slices"].items())) for r in recent_samples(store, 100))
        assert slices == [*[(("region", "eu"), ("x0", "low"))] * 3, (("x0", "high"),)]


def test_oip_v2_traffic_is_shadowed_with_ids_from_the_request_id(
    make_settings, model_files, teacher: FakeTeacher
) -> None:
    import tritonclient.http as triton

    settings = daemon_settings(make_settings, model_files, [teacher_config(teacher.url)])
    with _serve(settings) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        x = np.random.default_rng(4).normal(size=(3, 40)).astype(np.float32)
        inp = triton.InferInput("x", [3, 40], "FP32")
        inp.set_data_from_numpy(x)
        client.infer("student", [inp], request_id="req-7")
        client.close()
        store = server.daemon.store
        eventually(lambda: store.count_samples() == 3, what="3 stored samples")
        assert {r["request_id"] for r in recent_samples(store, 10)} == {"req-7:0", "req-7:1", "req-7:2"}
        reply = httpx.post(f"{server.url}/v1/feedback", json={"labels": [{"id": "req-7:1", "label": 4}]})
        assert reply.json() == {"accepted": 1, "unknown_ids": []}
