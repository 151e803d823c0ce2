"""Training that converges: early stopping, best epoch, schedule, hold-out, baseline selection,
and the training verdicts on real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from distill_engine import load_job, run
from distill_engine.dist import DistContext
from distill_engine.holdout import strata_of, stratified_split
from distill_engine.job import LossSpec, TrainSpec
from distill_engine.progress import Progress
from distill_engine.train import lr_factor, make_data, predict_logits, train_model
from distill_engine.zoo import build_model, count_params, mlp, wider_variants

from .helpers import C, D, blobs, write_job


def test_epochs_is_a_maximum_and_the_best_epoch_is_restored() -> None:
    x, y = blobs(400, 1)
    xv, yv = blobs(150, 2)
    torch.manual_seed(0)
    model = mlp(D, C, hidden=[16])
    spec = TrainSpec(epochs=300, batch_size=32, lr=0.01, patience=4, min_epochs=3)
    res = train_model(
        model, make_data(x, None, y), LossSpec(kd_weight=0.0), spec, ctx=DistContext(),
        progress=Progress("none"), phase="s", val=make_data(xv, None, yv),
    )  # fmt: skip
    assert res.stopped_early and res.epochs_run < 300 and len(res.val_curve) == res.epochs_run
    assert res.best_epoch is not None and res.epochs_run - res.best_epoch == 4
    assert res.best_score == max(res.val_curve)
    restored = float((predict_logits(model, xv).argmax(1) == yv).mean())
    assert abs(restored - res.best_score) < 1e-6


def test_keep_last_runs_the_whole_schedule_and_keeps_its_last_epoch() -> None:
    """A hold-out that favours an early epoch (here: labels opposite to training's) does not
    decide the weights when `keep: last`; with `best` it would keep that early epoch."""
    x, y = blobs(400, 1)
    xv, yv = blobs(150, 2)
    wrong = (yv + 1) % C  # the better the model learns, the lower its hold-out score
    kept = {}
    for keep in ("best", "last"):
        torch.manual_seed(0)
        model = mlp(D, C, hidden=[16])
        spec = TrainSpec(epochs=12, batch_size=32, lr=0.01, patience=0, keep=keep)
        res = train_model(
            model, make_data(x, None, y), LossSpec(kd_weight=0.0), spec, ctx=DistContext(),
            progress=Progress("none"), phase="s", val=make_data(xv, None, wrong),
        )  # fmt: skip
        assert res.epochs_run == 12 and not res.stopped_early
        kept[keep] = (res, float((predict_logits(model, xv).argmax(1) == wrong).mean()))
    best, last = kept["best"], kept["last"]
    assert best[0].best_epoch == best[0].kept_epoch < 12 and abs(best[1] - max(best[0].val_curve)) < 1e-6
    assert last[0].kept_epoch == 12 and abs(last[1] - last[0].val_curve[-1]) < 1e-6
    assert last[1] < best[1]
    assert last[0].summary()["kept_epoch"] == 12


def test_schedule_warms_up_holds_then_decays_at_the_end() -> None:
    spec = TrainSpec()  # warm-up 5%, decay over the last 30%
    total = 1000
    assert lr_factor(0, total, spec) < 0.05 and lr_factor(49, total, spec) == 1.0
    assert lr_factor(100, total, spec) == lr_factor(699, total, spec) == 1.0
    assert 0.05 <= lr_factor(999, total, spec) < 0.06
    assert lr_factor(500, total, TrainSpec(lr_schedule="cosine")) < 0.51


def test_stratified_holdout_keeps_every_class_and_slice_on_both_sides() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, 500)
    slices = np.where(np.arange(500) < 40, "rare", "common")
    fit, hold = stratified_split(strata_of(classes, slices), 0.1, 30, seed=0)
    assert len(hold) == 50 and len(fit) == 450 and not set(fit) & set(hold)
    for s in ("rare", "common"):
        for c in range(3):
            m = (slices == s) & (classes == c)
            assert m[fit].any() and m[hold].any(), (s, c)
    assert len(stratified_split(strata_of(classes, None), 0.01, 30, seed=0)[1]) == 30  # the floor


def test_excluded_slices_are_trained_on_but_never_held_out() -> None:
    """Rows a warm-start parent trained on (the loop's replayed `reference`) would favour its epoch."""
    from types import SimpleNamespace

    from distill_engine.job import DistillJob
    from distill_engine.runner import _holdout_split

    rng = np.random.default_rng(0)
    slices = np.array(["reference"] * 300 + ["a"] * 200 + ["b"] * 100)
    probs = np.eye(C)[rng.integers(0, C, len(slices))]
    job = DistillJob.model_validate(
        {
            "name": "t",
            "data": {"train": "t.npz", "eval": "e.npz"},
            "calibrate": {"exclude_slices": ["reference"]},
        }
    )
    st = SimpleNamespace(
        job=job, teach=SimpleNamespace(train_probs=probs), train=SimpleNamespace(slices=slices)
    )
    keep = np.arange(len(slices))
    fit, hold = _holdout_split(st, keep)  # type: ignore[arg-type]
    assert len(hold) >= 30 and set(slices[hold]) == {"a", "b"}
    assert sorted(np.concatenate([fit, hold]).tolist()) == keep.tolist()
    assert (slices[fit] == "reference").sum() == 300
    job.calibrate.exclude_slices = []
    _, hold_all = _holdout_split(st, keep)  # type: ignore[arg-type]
    assert "reference" in set(slices[hold_all])


def test_wider_variants_stay_within_the_params_budget() -> None:
    parent = count_params(mlp(64, 10, hidden=[32]))
    variants = wider_variants("distill_engine.zoo:mlp", {"hidden": [32]}, 64, 10, 4.0, k=3)
    assert len(variants) == 3 and variants[-1]["params"] > variants[0]["params"] > parent
    for v in variants:
        built = count_params(build_model(v["factory"], v["kwargs"], 64, 10))
        assert built == v["params"] <= 4 * parent
    assert wider_variants("distill_engine.zoo:cnn1d", {}, 40, 10, 2.0, k=2)  # widths from the defaults


def test_baseline_is_returned_when_the_distilled_student_trails_it(tmp_path: Path) -> None:
    """A teacher that is wrong on most rows: labels alone do better, and the run says so."""
    x, y = blobs(600, 1)
    xe, ye = blobs(300, 2)
    wrong = np.eye(C)[(y + 1) % C] * 0.9 + 0.1 / C
    np.savez(tmp_path / "train.npz", x=x, y=y, teacher_probs=wrong)
    np.savez(tmp_path / "eval.npz", x=xe, y=ye, teacher_probs=np.eye(C)[(ye + 1) % C] * 0.9 + 0.1 / C)
    (tmp_path / "job.yaml").write_text(
        "data: {train: train.npz, eval: eval.npz}\nstudent: {kwargs: {hidden: [16]}}\n"
        "loss: {kd_weight: 0.9}\ntrain: {epochs: 15, batch_size: 64, lr: 0.01}\n"
    )
    res = run(load_job(tmp_path / "job.yaml"), tmp_path / "out", progress="none")
    r = res.result
    assert res.selected == "baseline" and r["selected"]["compared_on"] == "eval"
    assert r["selected"]["difference"] < -0.005 and "baseline" in r["selected"]["reason"]
    assert r["student"]["accuracy"] == r["baseline"]["accuracy"] > r["distilled"]["accuracy"]
    assert "label-only baseline" in res.report_path.read_text()
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["training"]["selected"] == "baseline" and card["temperature"] == r["baseline"]["temperature"]


def test_verdicts_tell_a_short_run_from_a_narrow_student(tmp_path: Path) -> None:
    (tmp_path / "short").mkdir()
    (tmp_path / "narrow").mkdir()
    short = write_job(tmp_path / "short", epochs=4, train={"epochs": 4, "batch_size": 64, "lr": 0.0003})
    r = run(load_job(short), tmp_path / "short" / "out", progress="none").result
    assert r["stop"]["verdict"] == "under_trained" and r["stop"]["evidence"]["training"]["rising"]
    narrow = write_job(
        tmp_path / "narrow",
        epochs=40,
        student={"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [1]}},
    )
    r = run(load_job(narrow), tmp_path / "narrow" / "out", progress="none").result
    probe = r["stop"]["evidence"]["probe"]
    assert r["stop"]["verdict"] == "capacity_limited", r["stop"]["evidence"]
    assert probe["clearly_better"] and probe["params"] <= 4 * r["params"]["student"]
    assert probe["train_agreement"] >= r["stop"]["evidence"]["fit"]["train_agreement"] + 0.02
