"""Teacher-labelled synthesis: generators stay in the slice's ranges, filter counts add up,
synthetic rows never reach the hold-out or the eval set."""

from __future__ import annotations

import numpy as np
import pytest

from distill_engine import JobError, load_job, parse_job, run
from distill_engine.job import SynthesisSpec
from distill_engine.synthesis import generate, synthesize
from distill_engine.teachers import make_teacher
from distill_engine.zoo import resolve_factory

from .helpers import blobs, teacher_onnx, write_job


def double_rows(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A user generator that steps outside the slice on purpose (the engine clips it back)."""
    return x[rng.integers(0, len(x), n)] * 2.0


@pytest.mark.parametrize("kind", ["jitter", "smote", "mixup", "shift"])
def test_generators_stay_inside_the_slice_feature_ranges(kind: str) -> None:
    x, _ = blobs(80, 3)
    donors = blobs(500, 4)[0].astype(np.float64) * 3.0  # rows outside the slice, spread wider
    spec = SynthesisSpec(generators=[kind], candidates_per_row=2.0, jitter_scale=3.0)
    cand, counts = generate(x.astype(np.float64), spec, np.random.default_rng(0), donors=donors)
    assert counts == {kind: 160} and cand.shape == (160, x.shape[1])
    assert (cand >= x.min(0) - 1e-6).all() and (cand <= x.max(0) + 1e-6).all()
    assert len(np.unique(cand.round(5), axis=0)) > 100  # new points, not copies


def test_shift_carries_the_slices_change_onto_rows_it_did_not_send() -> None:
    """The slice's rows are the others moved by +3 on feature 0 (a covariate shift): shifted
    donors are distributed as the slice is, though the slice sent 40 rows and the donors 2,000."""
    rng = np.random.default_rng(1)
    donors = rng.normal(size=(2000, 5))
    slice_rows = rng.normal(size=(40, 5)) + np.array([3.0, 0, 0, 0, 0])
    spec = SynthesisSpec(generators=["shift"], candidates_per_row=25.0)
    cand, counts = generate(slice_rows, spec, rng, donors=donors)
    assert counts == {"shift": 1000}
    assert abs(cand[:, 0].mean() - slice_rows[:, 0].mean()) < 0.15  # moved with the slice
    assert np.allclose(cand[:, 1:].std(0), 1.0, atol=0.15)  # the donors' spread, not the slice's 40 rows
    # Without donors (no rows outside the seeds) the generator is skipped, not an error.
    assert generate(slice_rows, spec, rng)[1] == {}


def test_user_generator_is_clipped_and_counted() -> None:
    x, _ = blobs(50, 3)
    spec = SynthesisSpec(generators=[], generator=f"{double_rows.__module__}:double_rows")
    user = resolve_factory(str(spec.generator), "synthesis.generator")
    cand, counts = generate(x.astype(np.float64), spec, np.random.default_rng(0), user)
    assert counts == {"user": 600} and (cand <= x.max(0) + 1e-6).all() and (cand >= x.min(0) - 1e-6).all()
    capped = spec.model_copy(update={"max_candidates": 70})  # at most max_candidates per slice
    assert generate(x.astype(np.float64), capped, np.random.default_rng(0), user)[1] == {"user": 70}


def test_filters_remove_what_they_say(tmp_path) -> None:
    teacher_onnx(tmp_path / "t.onnx")
    x, _ = blobs(300, 1)
    slices = np.where(np.arange(300) < 60, "weak", "other")
    job = parse_job(
        {
            "data": {"train": "a", "eval": "b"},
            "teachers": [{"name": "t", "kind": "onnx", "path": str(tmp_path / "t.onnx"), "batch_size": 50}],
            "synthesis": {
                "enabled": True,
                "slices": ["weak"],
                "min_teacher_confidence": 0.9,
                "candidates_per_row": 3.0,
                "max_ratio": 0.5,
            },
        }
    )
    adapters = {"t": make_teacher(job.teachers[0], None)}
    syn = synthesize(job, adapters, x, slices, None, seed=0)
    c = syn.counts["weak"]
    assert set(syn.counts) == {"weak"} and c["real_rows"] == 60 and c["generated"] == 180
    removed = c["low_confidence"] + c["duplicates"] + c["unlike_production"] + c["over_max_ratio"]
    assert c["generated"] - removed == c["kept"] == len(syn) <= 30
    assert c["low_confidence"] > 0 and (syn.probs.max(1) >= 0.9).all()
    assert syn.teacher_calls == 4 and (syn.weights == 0.5).all() and set(syn.slices) == {"weak"}
    w = x[:60]
    assert (syn.x >= w.min(0) - 1e-6).all() and (syn.x <= w.max(0) + 1e-6).all()
    # Candidates that repeat a real row are dropped as duplicates.
    dup_job = job.model_copy(deep=True)
    dup_job.synthesis.generators = ["mixup"]
    dup_job.synthesis.mixup_alpha = 0.001  # mixing weight ~0 or ~1: almost every candidate is a real row
    dup_job.synthesis.min_teacher_confidence = 0.0
    d = synthesize(dup_job, adapters, x, slices, None, seed=0).counts["weak"]
    assert d["duplicates"] > 0.5 * d["generated"]
    for ad in adapters.values():
        ad.close()


def test_synthetic_rows_train_but_never_reach_holdout_or_eval(tmp_path) -> None:
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off = run(load_job(write_job(tmp_path / "off", epochs=6)), tmp_path / "off" / "out", progress="none")
    path = write_job(
        tmp_path / "on",
        epochs=6,
        synthesis={"enabled": True, "slices": ["a"], "ablate": True, "max_ratio": 0.5},
    )
    on = run(load_job(path), tmp_path / "on" / "out", progress="none")
    syn = on.result["synthesis"]
    assert syn["rows"] == syn["slices"]["a"]["kept"] > 0 and syn["teacher_calls"] >= 1
    assert on.card["training"]["synthetic_rows"] == syn["rows"]
    for key in ("train_rows", "holdout_rows"):  # the real split is the same with and without synthesis
        assert on.card["training"][key] == off.card["training"][key]
    assert on.result["student"]["n"] == off.result["student"]["n"] == 300
    assert on.result["calibration_holdout"]["before"]["n"] == off.result["calibration_holdout"]["before"]["n"]
    ab = syn["ablation"]
    assert ab["with_synthesis"]["accuracy"] == on.result["student"]["accuracy"]
    assert ab["without_synthesis"]["n"] == 300 and "Synthesis" in on.report_path.read_text()
    assert off.result["synthesis"] is None


def test_synthesis_needs_teachers_and_no_hints(tmp_path) -> None:
    with pytest.raises(JobError, match="synthesis cannot be combined"):
        parse_job({"data": {"train": "a", "eval": "b"}, "synthesis": {"enabled": True},
                   "loss": {"hints": [{"teacher": "t", "student": "s"}]}})  # fmt: skip
    with pytest.raises(JobError, match=r"^synthesis\.generator: "):
        parse_job({"data": {"train": "a", "eval": "b"}, "synthesis": {"generator": "nocolon"}})


def test_seeds_are_the_heavy_rows_of_the_slice(tmp_path) -> None:
    teacher_onnx(tmp_path / "t.onnx")
    x, _ = blobs(300, 1)
    x[240:] += 4.0  # the weak slice's newest rows moved far from everything else
    slices = np.where(np.arange(300) < 200, "other", "weak")
    weights = np.where(np.arange(300) >= 240, 3.0, 1.0)
    spec = {"enabled": True, "slices": ["weak"], "min_teacher_confidence": 0.0, "candidates_per_row": 3.0}
    job = parse_job(
        {
            "data": {"train": "a", "eval": "b"},
            "teachers": [{"name": "t", "kind": "onnx", "path": str(tmp_path / "t.onnx")}],
            "synthesis": {**spec, "min_seed_weight": 3.0},
        }
    )
    adapters = {"t": make_teacher(job.teachers[0], None)}
    # Production: mostly the other rows, as in a window where the weak slice is a small share.
    production = x[:240]
    syn = synthesize(job, adapters, x, slices, production, seed=0, weights=weights)
    c = syn.counts["weak"]
    assert c["real_rows"] == 60 and c["generated"] == 180
    assert (syn.x >= x[240:].min(0) - 1e-6).all()  # near the moved rows only
    # Matched against the slice's own seed rows: only the candidates least like them go.
    assert c["unlike_production"] < 60 and c["kept"] > 100
