"""MNIST-1D distillation benchmark: one table, same run, recorded in docs/BENCHMARKS.md.

Data are generated offline with mnist1d's `make_dataset` (never downloaded). Teachers are
1-D CNNs trained on the labelled split; "production traffic" is a larger generated pool the
teachers label (no true labels). Every row is one `distill_engine.run` on the same data.

    .venv/bin/python bench/distill_mnist1d.py [--rows 50000] [--epochs 15] [--no-append]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import command_line, record

from distill_engine import parse_job, run
from distill_engine.dist import DistContext
from distill_engine.job import LossSpec, TrainSpec
from distill_engine.progress import Progress
from distill_engine.train import make_data, predict_logits, train_model
from distill_engine.zoo import cnn1d

ROOT = Path(__file__).resolve().parents[1]
TEACHER_KW: dict[str, Any] = {"channels": [64, 64, 64], "hidden": 128}
STUDENT_KW: dict[str, Any] = {"channels": [32, 32, 32], "hidden": 0}
ASSISTANT_KW: dict[str, Any] = {"channels": [48, 48, 48], "hidden": 64}


def generate(num_samples: int, seed: int, train_split: float = 0.8) -> dict[str, np.ndarray]:
    """MNIST-1D rows generated locally from the library's default arguments."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    return make_dataset(args)


def train_teacher(x: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> torch.nn.Module:
    """A 1-D CNN teacher on labels only (the same loop the engine uses, kd_weight 0)."""
    torch.manual_seed(seed)
    model = cnn1d(40, 10, **TEACHER_KW)
    train_model(
        model,
        make_data(x, None, y),
        LossSpec(kd_weight=0.0),
        TrainSpec(epochs=epochs, batch_size=128, lr=3e-3, weight_decay=1e-2, seed=seed, lr_schedule="cosine"),
        ctx=DistContext(),
        progress=Progress("none"),
        phase="teacher",
    )
    return model.eval()


def probs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    z = predict_logits(model, x)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000, help="production traffic rows")
    ap.add_argument("--labelled", type=int, default=10_000, help="labelled training rows")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mnist1d-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_setup = time.perf_counter()

    lab = generate(int(args.labelled / 0.8), seed=42)
    x, y = lab["x"].astype(np.float32), lab["y"].astype(np.int64)
    xe, ye = lab["x_test"].astype(np.float32), lab["y_test"].astype(np.int64)
    pool = generate(args.rows + 5000, seed=7, train_split=args.rows / (args.rows + 5000))
    xp, xr = pool["x"].astype(np.float32), pool["x_test"].astype(np.float32)  # traffic; recent window
    np.savez(work / "labelled.npz", x=x, y=y)
    np.savez(work / "eval.npz", x=xe, y=ye)
    np.savez(work / "recent.npz", x=xr)

    teachers = {}
    for name, seed in (("cnn_a", 0), ("cnn_b", 1)):
        cached = work / f"{name}.pt"
        if cached.exists():  # a reused --workdir keeps its teachers (same seed, same data)
            m = cnn1d(40, 10, **TEACHER_KW)
            m.load_state_dict(torch.load(cached, weights_only=True))
            teachers[name] = m.eval()
            continue
        m = train_teacher(x, y, seed, args.teacher_epochs)
        torch.save(m.state_dict(), cached)
        teachers[name] = m
    tp = {n: probs(m, xp) for n, m in teachers.items()}
    np.savez(work / "traffic.npz", x=xp, teacher_probs=tp["cnn_a"])
    np.savez(work / "traffic2.npz", x=xp, teacher_probs__cnn_a=tp["cnn_a"], teacher_probs__cnn_b=tp["cnn_b"])
    setup_s = time.perf_counter() - t_setup

    def teacher_spec(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "torch",
            "path": f"{name}.pt",
            "factory": "distill_engine.zoo:cnn1d",
            "output_kind": "logits",
            "kwargs": {"num_features": 40, "num_classes": 10, **TEACHER_KW},
        }

    curation = {
        "min_teacher_confidence": 0.3,
        "dedupe": True,
        "dedupe_tolerance": 1e-3,
        "match_production": {"path": "recent.npz", "clip": [0.2, 5.0]},
    }
    base: dict[str, Any] = {
        "student": {"factory": "distill_engine.zoo:cnn1d", "kwargs": STUDENT_KW},
        "teachers": [teacher_spec("cnn_a")],
        "data": {"train": "traffic.npz", "eval": "eval.npz"},
        "loss": {"temperature": 2.0, "kd_weight": 1.0},
        "curation": {"dedupe": False},
        "train": {"epochs": args.epochs, "batch_size": 256, "lr": 3e-3, "seed": 0},
        "baseline": "none",
    }
    hints = {"hints": [{"teacher": "fc", "student": "features", "weight": 1.0}], "hint_epochs": 2}
    variants: list[tuple[str, dict[str, Any]]] = [
        (
            "student trained on labels only",
            {
                "data": {"train": "labelled.npz", "eval": "eval.npz"},
                "loss": {"temperature": 1.0, "kd_weight": 0.0},
            },
        ),
        ("KD on teacher-labelled traffic", {}),
        ("+ curation", {"curation": curation}),
        ("+ hints", {"curation": curation, "loss": {**base["loss"], **hints}}),
        (
            "ensemble of two teachers",
            {
                "curation": curation,
                "teachers": [teacher_spec("cnn_a"), teacher_spec("cnn_b")],
                "data": {"train": "traffic2.npz", "eval": "eval.npz"},
            },
        ),
        (
            "staged via an assistant",
            {
                "curation": curation,
                "stages": [{"student": {"factory": "distill_engine.zoo:cnn1d", "kwargs": ASSISTANT_KW}}],
            },
        ),
    ]
    rows: list[dict[str, Any]] = []
    results = {}
    for label, over in variants:
        job = parse_job({**base, **over, "name": label.replace(" ", "_")}, base_dir=work)
        t0 = time.perf_counter()
        res = run(job, work / f"out_{len(results)}", progress="none")
        wall = time.perf_counter() - t0
        results[label] = res.result
        r = res.result
        if label.startswith("KD on"):
            teacher_row = {
                "label": "teacher (cnn_a, labels)",
                "acc": r["teacher"]["accuracy"],
                "agree": 1.0,
                "ece0": r["teacher"]["ece"],
                "ece1": None,
                "params": r["params"]["teachers"]["cnn_a"],
                "wall": None,
                "rows_used": len(x),
            }
        rows.append(
            {
                "label": label,
                "acc": r["student"]["accuracy"],
                "agree": r["student"]["agreement"],
                "ece0": r["student_uncalibrated"]["ece"],
                "ece1": r["student"]["ece"],
                "params": r["params"]["student"],
                "wall": wall,
                "rows_used": r["curation"]["kept"],
                "parity": r["onnx_parity"]["max_abs_diff"],
            }
        )
        print(f"{label}: acc={rows[-1]['acc']:.4f} wall={wall:.1f}s", file=sys.stderr)
    rows.insert(0, teacher_row)

    t_acc = teacher_row["acc"]
    t_params = teacher_row["params"]
    best = max(rows[1:], key=lambda r: r["acc"])

    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{100 * v:.2f}%" if pct else f"{v:.1f}"
        return str(v)

    lines = [
        "| model | rows used | accuracy | agreement | ECE before | ECE after scaling | params | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['rows_used']} | {f(r['acc'], True)} | {f(r['agree'], True)} | "
            f"{f(r['ece0'], True)} | {f(r['ece1'], True)} | {r['params']} | {f(r['wall'])} |"
        )
    kd = results["KD on teacher-labelled traffic"]
    summary = [
        "",
        f"Best student: **{best['label']}**, {100 * best['acc']:.2f}% = "
        f"{100 * best['acc'] / t_acc:.1f}% of the teacher's accuracy with {best['params']} params = "
        f"1/{t_params / best['params']:.1f} of the teacher's (targets ≥ 95%, ≤ 1/5). "
        f"ECE after scaling ≤ {100 * max(r['ece1'] for r in rows[1:]):.2f}% "
        "(target ≤ 2%).",
        f"One round on {args.rows} rows (KD row, export and parity included): "
        f"{rows[2]['wall']:.1f} s (target ≤ 120 s); ONNX parity max |Δp| "
        f"{max(r.get('parity', 0) for r in rows):.1e}. "
        f"Setup (data generation, two teachers): {setup_s:.0f} s.",
        f"Stop rule on the KD round: `{kd['stop']['verdict']}`.",
    ]
    table = "\n".join(lines + summary)
    print(table)
    if not args.no_append:
        notes = (
            f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads. Labelled split {len(x)} rows, frozen eval {len(xe)} rows, traffic {len(xp)} rows "
            f"(teacher-labelled, no labels), recent production window {len(xr)} rows."
        )
        record("distill_mnist1d", "distill_engine on MNIST-1D", command_line(), table, notes)


if __name__ == "__main__":
    main()
