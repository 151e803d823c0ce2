"""Job spec loading: YAML/JSON, defaults, and errors that name the dotted field."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_engine import DistillJob, JobError, load_job, parse_job

MINIMAL = {
    "data": {"train": "train.npz", "eval": "eval.npz"},
    "teachers": [{"name": "big", "kind": "onnx", "path": "teacher.onnx"}],
}


def test_contract_example_parses(tmp_path: Path) -> None:
    text = """
student: {factory: "distill_engine.zoo:mlp", kwargs: {hidden: [64, 64]}}
teachers: [{name: big, kind: onnx, path: teacher.onnx, weight: 1.0}]
data:
  train: train.npz
  eval: eval.npz
loss: {temperature: 4.0, kd_weight: 0.9, schedule: constant, hints: []}
curation: {min_teacher_confidence: 0.0, dedupe: true, slice_weights: {}, match_production: null}
stages: []
train: {epochs: 30, batch_size: 256, lr: 0.003, seed: 0, device: auto}
calibrate: true
"""
    (tmp_path / "job.yaml").write_text(text)
    job = load_job(tmp_path / "job.yaml")
    assert job.loss.temperature == 4.0 and job.calibrate.enabled and job.train.epochs == 30
    assert job.resolve(job.data.train) == tmp_path.resolve() / "train.npz"


def test_json_and_python_construction(tmp_path: Path) -> None:
    import json

    (tmp_path / "job.json").write_text(json.dumps(MINIMAL))
    assert load_job(tmp_path / "job.json").teachers[0].name == "big"
    job = DistillJob(data={"train": "/a.npz", "eval": "/b.npz"}, calibrate=False)  # type: ignore[arg-type]
    assert not job.calibrate.enabled and job.student.factory == "distill_engine.zoo:mlp"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"loss": {"kd_weight": 1.5}}, "loss.kd_weight"),
        ({"loss": {"schedule": "steps"}}, "loss.schedule"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"teachers": [{"name": "x", "kind": "grpc", "path": "a"}]}, "teachers.0.kind"),
        ({"teachers": [{"name": "x", "kind": "http-v2"}]}, "teachers.0"),
        ({"student": {"factory": "no_colon"}}, "student.factory"),
        (
            {"curation": {"match_production": {"path": "p.npz", "clip": [5, 1]}}},
            "curation.match_production.clip",
        ),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_errors_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(JobError) as e:
        parse_job({**MINIMAL, **patch})
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ") and "\n" not in str(e.value)


def test_missing_data_section() -> None:
    with pytest.raises(JobError, match="^data: "):
        parse_job({"teachers": []})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="cannot read"):
        load_job(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(tmp_path / "bad.yaml")


def test_teacher_location_alias() -> None:
    job = parse_job(
        {
            **MINIMAL,
            "teachers": [
                {"name": "a", "kind": "onnx", "location": "t.onnx"},
                {"name": "b", "kind": "http-v2", "location": "http://h:1", "model_name": "big"},
            ],
        }
    )
    assert job.teachers[0].path == "t.onnx" and job.teachers[1].url == "http://h:1"
