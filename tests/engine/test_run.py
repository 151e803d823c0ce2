"""End-to-end runs of tiny jobs in process: files, contract fields, determinism, options."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from distill_engine import Cancelled, JobError, load_job, run, run_job_file
from distill_engine.ensemble import combine, route
from distill_engine.export import onnx_logits
from distill_engine.job import HintSpec, TeacherSpec

from .helpers import blobs, teacher_onnx, write_job

METRICS = {"accuracy", "agreement", "ece", "ece_adaptive", "brier", "nll"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    folder = tmp_path_factory.mktemp("tiny")
    job = write_job(folder)
    return folder, run_job_file(job, folder / "out", progress="none")


def test_writes_contract_files_and_fields(tiny: tuple[Path, Any]) -> None:
    folder, res = tiny
    out = folder / "out"
    for name in ("student.onnx", "card.json", "result.json", "report.html"):
        assert (out / name).is_file()
    card = json.loads((out / "card.json").read_text())
    assert {
        "name",
        "version",
        "input_name",
        "output_name",
        "num_features",
        "classes",
        "output_kind",
        "temperature",
        "created_at",
        "training",
    } <= set(card)
    assert (
        card["output_kind"] == "logits" and card["num_features"] == 8 and card["classes"] == ["0", "1", "2"]
    )
    r = json.loads((out / "result.json").read_text())
    for key in ("teacher", "student", "baseline"):
        assert set(r[key]) >= METRICS, key
        assert set(r[key]["slices"]) == {"a", "b"} and set(r[key]["slices"]["a"]) >= METRICS
    for key in ("temperature", "curation", "stages", "stop", "onnx_parity", "params", "wall_seconds"):
        assert key in r
    assert r["stop"]["verdict"] in ("under_trained", "capacity_limited", "converged", "ceiling_reached")
    assert all("triggered" in reason for reason in r["stop"]["reasons"])
    assert r["onnx_parity"]["ok"] and r["onnx_parity"]["max_abs_diff"] <= 1e-5
    assert r["params"]["teacher"] > r["params"]["student"] > 0
    assert r["curation"]["input"] == 600
    assert r["student"]["accuracy"] > 0.8 and r["student"]["agreement"] > 0.85
    # Scaling never changes the arg-max.
    assert r["student"]["accuracy"] == r["student_uncalibrated"]["accuracy"]
    html = (out / "report.html").read_text()
    assert "<svg" in html and "reliability" in html.lower() and "http" not in html.split("<svg")[0].lower()


def test_onnx_matches_card_and_dynamic_batch(tiny: tuple[Path, Any]) -> None:
    folder, res = tiny
    model = onnx.load(str(folder / "out" / "student.onnx"))
    assert model.graph.input[0].name == res.card["input_name"]
    assert model.graph.output[0].name == res.card["output_name"]
    x, _ = blobs(7, 9)
    assert onnx_logits(folder / "out" / "student.onnx", x, batch_size=3).shape == (7, 3)


def test_same_seed_same_result(tiny: tuple[Path, Any], tmp_path: Path) -> None:
    folder, first = tiny
    second = run_job_file(folder / "job.yaml", tmp_path / "again", progress="none")
    assert second.card["version"] == first.card["version"]  # identical ONNX bytes
    for key in ("student", "temperature", "curation", "stop"):
        assert second.result[key] == first.result[key]
    drop = {"seconds"}
    assert {k: v for k, v in second.result["baseline"].items() if k not in drop} == {
        k: v for k, v in first.result["baseline"].items() if k not in drop
    }
    x, _ = blobs(100, 11)
    assert np.array_equal(
        onnx_logits(folder / "out" / "student.onnx", x), onnx_logits(tmp_path / "again" / "student.onnx", x)
    )


def test_precomputed_teacher_probs_and_row_weights(tmp_path: Path) -> None:
    """The daemon's path: outputs already collected, no teacher is called; weights matter."""
    x, y = blobs(500, 1)
    xe, ye = blobs(200, 2)
    rng = np.random.default_rng(0)
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    np.savez(
        tmp_path / "train.npz",
        x=x,
        teacher_probs=probs,
        weight=rng.uniform(0.5, 2.0, 500),
        teacher_version=np.array(["v1"] * 450 + ["v0"] * 50),
    )
    np.savez(tmp_path / "eval.npz", x=xe, y=ye, teacher_probs=np.eye(3)[ye] * 0.8 + 0.2 / 3)
    (tmp_path / "job.yaml").write_text(
        "data: {train: train.npz, eval: eval.npz}\n"
        "student: {kwargs: {hidden: [16]}}\n"
        "curation: {exclude_teacher_versions: [v0]}\n"
        "train: {epochs: 3, batch_size: 64, lr: 0.01}\n"
    )
    res = run_job_file(tmp_path / "job.yaml", tmp_path / "out", progress="none")
    r = res.result
    assert r["curation"]["excluded_teacher_versions"] == 50
    assert r["baseline"] is None  # no labels in the training rows
    assert r["params"]["teacher"] is None and r["teacher"]["accuracy"] == 1.0
    assert r["temperature_fitted_on"] == "teacher_probs"


def test_ensemble_modes_and_specialists() -> None:
    a = np.array([[0.9, 0.1], [0.5, 0.5]])
    b = np.array([[0.5, 0.5], [0.1, 0.9]])
    assert np.allclose(combine([a, b], [3, 1]), 0.75 * a + 0.25 * b)
    geo = combine([a, b], [1, 1], "logits")
    expected = np.sqrt(a * b) / np.sqrt(a * b).sum(1, keepdims=True)
    assert np.allclose(geo, expected)
    specs = [
        TeacherSpec(name="gen", kind="onnx", path="g"),
        TeacherSpec(name="expert", kind="onnx", path="e", slices=["hard"]),
    ]
    out, source = route({"gen": a, "expert": b}, specs, np.array(["hard", "easy"]))
    assert np.allclose(out[0], b[0]) and np.allclose(out[1], a[1])
    assert source.tolist() == ["expert", "gen"]


def test_two_teachers_with_specialist_run(tmp_path: Path) -> None:
    write_job(tmp_path, epochs=2)
    teacher_onnx(tmp_path / "teacher2.onnx", seed=1)
    job = load_job(tmp_path / "job.yaml")
    job.teachers.append(
        TeacherSpec(name="expert", kind="onnx", path="teacher2.onnx", weight=2.0, slices=["a"])
    )
    job.loss.ensemble = "logits"
    r = run(job, tmp_path / "out", progress="none").result
    assert set(r["params"]["teachers"]) == {"big", "expert"}
    assert r["params"]["teacher"] == sum(r["params"]["teachers"].values())


def test_assistant_stage_is_measured_and_saved(tmp_path: Path) -> None:
    path = write_job(
        tmp_path,
        epochs=2,
        stages=[{"student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [24]}}}],
    )
    r = run_job_file(path, tmp_path / "out", progress="none").result
    assert len(r["stages"]) == 1
    stage = r["stages"][0]
    assert (tmp_path / "out" / stage["onnx"]).is_file()
    assert set(stage["eval"]) >= METRICS and stage["params"] > r["params"]["student"]


def test_hints_from_onnx_intermediate(tmp_path: Path) -> None:
    write_job(tmp_path, epochs=2)
    relu = [n.output[0] for n in onnx.load(str(tmp_path / "teacher.onnx")).graph.node if n.op_type == "Relu"]
    job = load_job(tmp_path / "job.yaml")
    job.loss.hints = [HintSpec(teacher=relu[-1], student="body.1")]
    job.loss.hint_epochs = 2
    r = run(job, tmp_path / "out", progress="none").result
    phases = [c["phase"] for c in r["curves"]]
    assert phases.count("student:hints") == 2 and r["onnx_parity"]["ok"]


def test_user_errors_name_fields(tmp_path: Path) -> None:
    path = write_job(tmp_path, epochs=1)
    job = load_job(path)
    job.data.train = "missing.npz"
    with pytest.raises(JobError, match=r"^data\.train: file not found"):
        run(job, tmp_path / "o1", progress="none")
    job = load_job(path)
    job.student.factory = "distill_engine.zoo:nothing_here"
    with pytest.raises(JobError, match=r"^student\.factory: "):
        run(job, tmp_path / "o2", progress="none")
    job = load_job(path)
    job.student.kwargs = {"widths": [3]}
    with pytest.raises(JobError, match=r"^student\.kwargs: "):
        run(job, tmp_path / "o3", progress="none")
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 3), np.float32))
    job = load_job(path)
    job.data.eval = "bad.npz"
    with pytest.raises(JobError, match=r"^data\.eval: x has 3 features"):
        run(job, tmp_path / "o4", progress="none")


def test_cancel_event_and_progress_callback(tmp_path: Path) -> None:
    path = write_job(tmp_path, epochs=3)
    stop = threading.Event()
    events: list[dict[str, Any]] = []

    def on_event(e: dict[str, Any]) -> None:
        events.append(e)
        if e["event"] == "epoch":
            stop.set()

    with pytest.raises(Cancelled):
        run_job_file(path, tmp_path / "out", progress=on_event, cancel=stop)
    assert [e["event"] for e in events][:2] == ["start", "teacher"]
    assert sum(e["event"] == "epoch" for e in events) == 1
    assert not (tmp_path / "out" / "student.onnx").exists()


def test_json_progress_lines_and_escaped_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_job(tmp_path, epochs=1, baseline="none", name="<script>alert(1)</script>")
    res = run_job_file(path, tmp_path / "out", progress="json")
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "done"
    html = res.report_path.read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
