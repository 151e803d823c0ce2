"""The closed loop on data the project was not built on, with the default settings (issues 27, 33).

Three scenarios, each with its own ONNX teacher (trained on clean and shifted inputs) and a
small student distilled by the engine on clean inputs only, before the shift:

- `digits-rotate`: scikit-learn's digits (8x8 images), source c's images rotated by 30 degrees;
- `tabular-covariate`: 12 numeric features labelled by a fixed random network, source c's
  most influential feature moved by +3 standard deviations (a covariate shift on one feature);
- `label-prior`: 8 Gaussian classes (make_classification), source c's traffic drawn 85% from
  the three classes the student gets wrong most often (a label-prior shift).

Traffic comes from sources a, b, c through `/v1/predict`; the daemon's config is the defaults
plus wiring (model, teacher, sampling rate 1, the slice key, the reference, the frozen eval
set) and the timing knobs `monitor.interval_s`, `monitor.window`, `policy.cooldown_s`,
`policy.auto_promote`. Quality is measured on probe rows that are never sent as traffic
(probe requests are not sampled): agreement with the teacher and accuracy per source.

Per scenario: a clean phase (does a promotion on clean traffic lower accuracy?) that ends once
no run is in progress, then the shift until a candidate is promoted. `--limit-shifted 100`
sends only the first 100 shifted rows of source c (a small source in those runs: 3 rows a
step against 30 from a and b), and runs each scenario twice, with `policy.synthesis` on and
off (issue 33).

`--repeats N` runs each session N times on the same data and models (a fresh daemon each time):
with a hundred shifted rows a single run's outcome varies with training, so the table gives
each run and the summary the range.

Usage: .venv/bin/python bench/loop_suite.py [--cases a,b] [--limit-shifted N] [--repeats N] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, free_port, record

from distill_watchdog.demo import ServeProcess, teacher_probs, train_classifier

SOURCES = ("a", "b", "c")
TOKEN = "suite-admin-token-0001"
TIMING = {"interval_s": 5.0}  # monitor.window: the default (5,000 rows)


@dataclass
class Pools:
    """Rows for one scenario: clean and shifted (x, y), split into training, traffic and probes."""

    train: tuple[np.ndarray, np.ndarray]  # clean rows the teacher and the first student learn from
    teacher_extra: tuple[np.ndarray, np.ndarray]  # shifted rows only the teacher sees
    traffic: tuple[np.ndarray, np.ndarray]  # clean traffic (all sources)
    shifted: tuple[np.ndarray, np.ndarray]  # source c's traffic after the shift
    probe_clean: tuple[np.ndarray, np.ndarray]  # never sent as traffic
    probe_shifted: tuple[np.ndarray, np.ndarray]


@dataclass
class Case:
    name: str
    make: Callable[[np.random.Generator], Pools]
    student_hidden: list[int]
    teacher_hidden: tuple[int, ...] = (256, 256)
    teacher_epochs: int = 40


# --- data ------------------------------------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[tuple]:
    order = rng.permutation(len(x))
    out, start = [], 0
    for n in sizes:
        idx = order[start : start + n]
        out.append((x[idx].astype(np.float32), y[idx].astype(np.int64)))
        start += n
    return out


def _digits(rng: np.random.Generator) -> Pools:
    from scipy.ndimage import rotate, shift
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = d.images / 16.0, d.target
    order = rng.permutation(len(images))
    base = {"train": order[:900], "traffic": order[900:1500], "probe": order[1500:]}

    def augment(idx: np.ndarray, copies: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(copies):
            for i in idx:
                img = images[i]
                if angle:
                    img = rotate(img, angle + rng.normal(0, 3), reshape=False, order=1)
                img = shift(img, rng.integers(-1, 2, size=2), order=0)
                xs.append(np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).ravel())
                ys.append(labels[i])
        return np.asarray(xs, np.float32), np.asarray(ys, np.int64)

    return Pools(
        train=augment(base["train"], 4, 0),
        teacher_extra=augment(base["train"], 4, 30),
        traffic=augment(base["traffic"], 4, 0),
        shifted=augment(base["traffic"], 2, 30),
        probe_clean=augment(base["probe"], 2, 0),
        probe_shifted=augment(base["probe"], 2, 30),
    )


def _tabular(rng: np.random.Generator) -> Pools:
    d, c = 12, 6
    w1 = rng.normal(0, 1 / np.sqrt(d), (d, 32))
    w2 = rng.normal(0, 1 / np.sqrt(32), (32, c))
    # The shift: 3 standard deviations on the feature the labels depend on most.
    moved_feature = int(np.argmax(np.linalg.norm(w1, axis=1)))

    def rows(n: int, moved: bool) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, d))
        if moved:
            x[:, moved_feature] += 3.0
        return x.astype(np.float32), (np.maximum(x @ w1, 0) @ w2).argmax(1)

    return Pools(
        train=rows(4000, False),
        teacher_extra=rows(4000, True),
        traffic=rows(2400, False),
        shifted=rows(1500, True),
        probe_clean=rows(600, False),
        probe_shifted=rows(600, True),
    )


def _prior(rng: np.random.Generator) -> Pools:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=14000, n_features=10, n_informative=8, n_redundant=0, n_classes=8,
        n_clusters_per_class=1, class_sep=1.2, random_state=int(rng.integers(1 << 30)),
    )  # fmt: skip
    train, traffic, probe, rest = _split(x, y, [4000, 2400, 1200, 6400], rng)
    # The shifted pools are filled once the first student is known (its three worst classes).
    return Pools(train, (train[0][:0], train[1][:0]), traffic, rest, probe, rest)


CASES = {
    "digits-rotate": Case("digits-rotate", _digits, [32]),
    "tabular-covariate": Case("tabular-covariate", _tabular, [16], (128, 128)),
    "label-prior": Case("label-prior", _prior, [12]),
}


def _prior_shift(
    pools: Pools, tprobs_fn: Callable[[np.ndarray], np.ndarray], student: Path, rng: Any
) -> Pools:
    """Source c's traffic and shifted probe: 85% from the 3 classes the student disagrees on most."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(student), providers=["CPUExecutionProvider"])
    x, y = pools.shifted
    pred = np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0]).argmax(1)
    agree = pred == tprobs_fn(x).argmax(1)
    worst = np.argsort([agree[y == k].mean() for k in range(8)])[:3]
    hard, easy = np.flatnonzero(np.isin(y, worst)), np.flatnonzero(~np.isin(y, worst))

    def draw(n: int, hard_idx: np.ndarray, easy_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = int(0.85 * n)
        # A pool smaller than the draw repeats rows (traffic only: the probe half is disjoint).
        idx = np.concatenate(
            [
                rng.choice(hard_idx, k, replace=len(hard_idx) < k),
                rng.choice(easy_idx, n - k, replace=len(easy_idx) < n - k),
            ]
        )
        return x[idx], y[idx]

    half_h, half_e = len(hard) // 2, len(easy) // 2
    return Pools(
        pools.train,
        pools.teacher_extra,
        pools.traffic,
        draw(1500, hard[:half_h], easy[:half_e]),
        pools.probe_clean,
        draw(600, hard[half_h:], easy[half_e:]),
    )


# --- models ----------------------------------------------------------------------------------------


def _train_teacher(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], epochs: int, out: Path) -> None:
    """An MLP on labels, exported to ONNX with a softmax output."""
    import torch

    from distill_engine.zoo import mlp

    torch.manual_seed(0)
    train_classifier(mlp(x.shape[1], int(y.max()) + 1, hidden=list(hidden)), x, y, epochs, out)


def _first_student(folder: Path, case: Case, pools: Pools, teacher: Path) -> Path:
    """The engine distils the small student on clean rows only (the engine's defaults)."""
    from distill_engine import run_job_file

    x, y = pools.train
    np.savez(folder / "s_train.npz", x=x, y=y, teacher_probs=teacher_probs(teacher, x))
    px, py = pools.probe_clean
    np.savez(folder / "s_eval.npz", x=px, y=py, teacher_probs=teacher_probs(teacher, px))
    job = {
        "name": f"{case.name}-student",
        "student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": case.student_hidden}},
        "data": {"train": "s_train.npz", "eval": "s_eval.npz"},
        "loss": {"temperature": 2.0, "kd_weight": 1.0},
        "train": {"epochs": 60, "batch_size": 128, "device": "cpu"},
        "baseline": "none",
    }
    (folder / "s_job.yaml").write_text(yaml.safe_dump(job))
    run_job_file(folder / "s_job.yaml", folder / "student", progress="none")
    return folder / "student"


def prepare(root: Path, case: Case, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    pools = case.make(rng)
    teacher = root / "teacher.onnx"
    extra = pools.shifted if case.name == "label-prior" else pools.teacher_extra  # prior: all classes
    tx, ty = np.concatenate([pools.train[0], extra[0]]), np.concatenate([pools.train[1], extra[1]])
    if not teacher.exists():  # a --workdir of an earlier run keeps its models (same seed, same data)
        _train_teacher(tx, ty, case.teacher_hidden, case.teacher_epochs, teacher)
    student = root / "student"
    if not (student / "student.onnx").exists():
        student = _first_student(root, case, pools, teacher)
    if case.name == "label-prior":
        pools = _prior_shift(pools, lambda v: teacher_probs(teacher, v), student / "student.onnx", rng)
    x = pools.train[0]
    np.savez(root / "reference.npz", x=x, teacher_probs=teacher_probs(teacher, x))
    ex, ey = pools.probe_clean
    np.savez(
        root / "eval.npz", x=ex, y=ey, slice=np.asarray([f"source={SOURCES[i % 3]}" for i in range(len(ex))])
    )
    return {"teacher": teacher, "student": student, "pools": pools, "root": root}


def write_config(session: Path, files: dict[str, Any], port: int, synthesis: bool | None) -> Path:
    """Defaults, wiring, and the timing knobs only (plus `policy.synthesis` for the ablation)."""
    policy: dict[str, Any] = {"cooldown_s": 0, "auto_promote": True}
    if synthesis is not None:
        policy["synthesis"] = synthesis
    config = {
        "data_dir": str(session / "daemon"),
        "server": {"port": port, "admin_token": TOKEN, "log_format": "text"},
        "student": {
            "model": str(files["student"] / "student.onnx"),
            "card": str(files["student"] / "card.json"),
        },
        "teachers": [{"name": "teacher", "kind": "onnx", "location": str(files["teacher"])}],
        "sampling": {
            "rate": 1.0,
            "per_slice": {"source=probe": 0.0},
            "eval_set": str(files["root"] / "eval.npz"),
        },
        "slices": {"keys": ["source"]},
        "monitor": {**TIMING, "reference": str(files["root"] / "reference.npz"), "leader_poll_s": 1.0},
        "policy": policy,
    }
    session.mkdir(parents=True, exist_ok=True)
    path = session / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- traffic and measurement -----------------------------------------------------------------------


def _predict(client: httpx.Client, url: str, x: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    preds, version = [], ""
    for i in range(0, len(x), 200):
        r = client.post(
            f"{url}/v1/predict", json={"inputs": x[i : i + 200].tolist(), "slice": {"source": source}}
        )
        r.raise_for_status()
        preds.extend(r.json()["predictions"])
        version = r.json()["model_version"]
    return np.asarray(preds), version


def measure(
    client: httpx.Client, url: str, probes: dict[str, tuple], tp: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Agreement with the teacher and accuracy per probe set (probe rows are never sampled)."""
    out: dict[str, Any] = {}
    for name, (x, y) in probes.items():
        pred, out["version"] = _predict(client, url, x, "probe")
        out[name] = {
            "agreement": float((pred == tp[name].argmax(1)).mean()),
            "accuracy": float((pred == y).mean()),
        }
    return out


def _runs(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    return client.get(f"{url}/admin/runs", headers={"Authorization": f"Bearer {TOKEN}"}).json()["runs"]


SLOW_C = 3  # rows per step of source c in the limited runs (a and b send 30)


def _step(client: httpx.Client, url: str, pools: Pools, i: int, shifted: bool, limit: int | None) -> None:
    """One step of traffic: 30 rows from each source (`i`: rows each source sent before). In a
    limited run source c is a small source (SLOW_C rows a step), and stops after `limit`
    shifted rows: its first post-shift rows are all a run can learn from."""
    for k, source in enumerate(SOURCES):
        n = 30
        if source == "c" and limit is not None:
            n = SLOW_C
            if shifted:
                sent = i // 30 * SLOW_C
                n = max(0, min(SLOW_C, limit - sent))
        if n == 0:
            continue
        if source == "c" and shifted:
            start = i if limit is None else i // 30 * SLOW_C
            x = pools.shifted[0][np.arange(start, start + n) % len(pools.shifted[0])]
        else:
            rows = np.arange(i + k * 997, i + k * 997 + n) % len(pools.traffic[0])
            x = pools.traffic[0][rows]
        client.post(
            f"{url}/v1/predict", json={"inputs": x.tolist(), "slice": {"source": source}}
        ).raise_for_status()


SETTLE_S = 300.0  # the targets are judged 5 min after the shift


def _idle(runs: list[dict[str, Any]]) -> bool:
    return not any(r["status"] in ("running", "pending") for r in runs)


def _quiet_for(seconds: float) -> Callable[[list[dict[str, Any]]], bool]:
    """A stop rule: no run in progress, and none started or finished for `seconds`."""
    seen: dict[str, Any] = {"state": None, "since": time.monotonic()}

    def quiet(runs: list[dict[str, Any]]) -> bool:
        state = sorted((r["id"], r["status"]) for r in runs)
        if state != seen["state"] or not _idle(runs):
            seen.update(state=state, since=time.monotonic())
        return time.monotonic() - seen["since"] >= seconds

    return quiet


def _settled(client: httpx.Client, url: str, runs: list[dict[str, Any]]) -> bool:
    """No weak slice left in the last cycle, and no run in progress."""
    weak = [
        ln for ln in client.get(f"{url}/metrics").text.splitlines() if ln.startswith("watchdog_weak_slices ")
    ]
    return _idle(runs) and bool(weak) and float(weak[0].split()[1]) == 0


def _traffic_until(
    client: httpx.Client,
    url: str,
    pools: Pools,
    seconds: float,
    shifted: bool,
    limit: int | None,
    stop: Any,
    start: int = 0,
) -> tuple[int, Any]:
    """Sends traffic (about 90 rows per step) until `stop(runs)` says something or time is up;
    `start`: where an earlier call of the same phase stopped."""
    i, deadline = start, time.monotonic() + seconds
    while time.monotonic() < deadline:
        _step(client, url, pools, i, shifted, limit)
        i += 30
        found = stop(_runs(client, url))
        if found:
            return i, found
        time.sleep(0.3)
    return i, None


def run_case(
    case: Case, files: dict[str, Any], root: Path, limit: int | None, synthesis: bool | None, clean_s: float
) -> dict[str, Any]:
    """One daemon session on a prepared scenario (`root`: this session's own folder, emptied first)."""
    shutil.rmtree(root, ignore_errors=True)
    pools: Pools = files["pools"]
    # Sources a and b (and c before the shift) send clean rows: one clean probe set stands for them.
    probes = {"clean": pools.probe_clean, "shifted": pools.probe_shifted}
    tp = {k: teacher_probs(files["teacher"], v[0]) for k, v in probes.items()}
    port = free_port()
    config = write_config(root, files, port, synthesis)
    with ServeProcess(config, port, root / "daemon.log") as daemon, httpx.Client(timeout=60) as client:
        url = daemon.url
        before = measure(client, url, probes, tp)
        # Clean phase: whatever the policy does on clean traffic, it must not lower accuracy. The
        # shift comes once no run is in progress: a promotion just after it would leave the
        # shifted rows to a student that never served them (the monitor judges a student on the
        # rows it served).
        _traffic_until(client, url, pools, clean_s, False, None, lambda runs: None)
        _traffic_until(client, url, pools, 300, False, None, _quiet_for(3 * TIMING["interval_s"]))
        clean_runs = [{"id": r["id"], "status": r["status"]} for r in _runs(client, url)]
        after_clean = measure(client, url, probes, tp)
        shift_at = time.monotonic()
        seen = {c["id"] for c in clean_runs}

        def promoted(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next((r for r in runs if r["status"] == "promoted" and r["id"] not in seen), None)

        shift_wall = time.time()
        sent, run = _traffic_until(client, url, pools, 420, True, limit, promoted)
        took = time.monotonic() - shift_at
        if run is not None:  # the loop goes on until the weak slice is gone or 5 min have passed
            settled = lambda runs: _settled(client, url, runs)  # noqa: E731
            _traffic_until(client, url, pools, SETTLE_S - took, True, limit, settled, sent)
        all_runs = [
            {"id": r["id"], "status": r["status"], "error": r.get("error")} for r in _runs(client, url)
        ]
        after = measure(client, url, probes, tp)
        last = next((r for r in _runs(client, url) if r["status"] == "promoted"), None)
        reports = []
        for r in all_runs:
            path = root / "daemon" / "runs" / r["id"] / "report.json"
            if path.exists():
                reports.append(json.loads(path.read_text()))
        report = reports[0] if reports else {}
        samples = [
            ln
            for ln in client.get(f"{url}/metrics").text.splitlines()
            if ln.startswith("watchdog_samples_total")
        ]
    lost = before["clean"]["agreement"] - before["shifted"]["agreement"]
    regained = after["shifted"]["agreement"] - before["shifted"]["agreement"]
    return {
        "case": case.name,
        "limit_shifted": limit,
        "synthesis": synthesis,
        "before": before,
        "after_clean": after_clean,
        "after": after,
        "clean_runs": clean_runs,
        "runs": all_runs,
        "promoted": run is not None,
        "shift_to_promotion_s": took if run is not None else None,
        "measured_s": time.monotonic() - shift_at,
        "active_version": after["version"],
        "last_promoted": last["candidate_version"] if last else None,
        "all_candidates": [rep.get("candidates") for rep in reports],
        "recovered": regained / lost if lost > 0 else float("nan"),
        "others_accuracy_change": after["clean"]["accuracy"] - before["clean"]["accuracy"],
        "others_agreement_change": after["clean"]["agreement"] - before["clean"]["agreement"],
        "clean_accuracy_change": after_clean["clean"]["accuracy"] - before["clean"]["accuracy"],
        "candidates": report.get("candidates"),
        "synthesis_counts": report.get("synthesis"),
        "stop": (report.get("stop") or {}).get("verdict"),
        "samples": samples,
        "decisions_after_shift": _decisions(root / "daemon" / "watchdog.db", shift_wall),
    }


def _decisions(db: Path, since: float) -> list[dict[str, Any]]:
    """The policy's decisions after the shift, with their weak slices: why a run did or did not
    start (read through the store once the daemon has stopped)."""
    from distill_watchdog.store import Store

    if not db.exists():
        return []
    store = Store(f"sqlite:///{db}", create=False)
    try:
        rows = [d for d in reversed(store.recent_decisions(500)) if d.at >= since][:80]
    finally:
        store.close()
    out = []
    for d in rows:
        weak = json.loads(d.numbers_json).get("weak_slices", [])
        out.append(
            {
                "s": round(d.at - since, 1),
                "action": d.action,
                "reason": d.reason[:160],
                "weak": [
                    {k: w.get(k) for k in ("slice", "test", "scope", "n", "gap", "recent_rows", "from")}
                    for w in weak
                ],
            }
        )
    return out


def _row(r: dict[str, Any]) -> str:
    b, a = r["before"], r["after"]
    took = f"{r['shift_to_promotion_s']:.0f}" if r["promoted"] else "not promoted"
    others = f"{100 * r['others_accuracy_change']:+.1f}"
    syn = "default" if r["synthesis"] is None else ("on" if r["synthesis"] else "off")
    agreement = (
        f"{b['clean']['agreement']:.1%} → {b['shifted']['agreement']:.1%} → {a['shifted']['agreement']:.1%}"
    )
    return (
        f"| {r['case']} | {syn} | {agreement} | {r['recovered']:.0%} | {others} | {took} | "
        f"{len(r['clean_runs'])} ({100 * r['clean_accuracy_change']:+.1f} pt) | {r['stop']} |"
    )


def _spread(results: list[dict[str, Any]]) -> str:
    """Per scenario and setting: the runs' recovered shares, their median and range."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in results:
        syn = "default" if r["synthesis"] is None else ("on" if r["synthesis"] else "off")
        groups.setdefault((r["case"], syn), []).append(r["recovered"])
    lines = ["| scenario | synthesis | recovered, each run | median | min – max |", "|---|---|---|---|---|"]
    for (case, syn), values in groups.items():
        each = ", ".join(f"{v:.0%}" for v in values)
        lines.append(
            f"| {case} | {syn} | {each} | {np.median(values):.0%} | {min(values):.0%} – {max(values):.0%} |"
        )
    return "\n".join(lines)


HEADER = (
    "| scenario | synthesis | source c agreement: clean → shifted → after | recovered | sources a, b: "
    "accuracy change (pt) | shift → promotion (s) | runs on clean traffic (accuracy) | stop verdict |\n"
    "|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--limit-shifted", type=int, default=None)
    ap.add_argument("--clean-s", type=float, default=40.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--workdir", help="keep each scenario's data and models here (reused when present)")
    args = ap.parse_args()
    load = os.getloadavg()
    results = []
    settings = [None] if args.limit_shifted is None else [True, False]
    for name in args.cases.split(","):
        tmp = str(Path(args.workdir) / name) if args.workdir else tempfile.mkdtemp(prefix=f"suite-{name}-")
        Path(tmp).mkdir(parents=True, exist_ok=True)
        files = prepare(Path(tmp), CASES[name])
        for synthesis in [s for s in settings for _ in range(args.repeats)]:
            began = time.perf_counter()
            label = "default" if synthesis is None else f"synthesis-{synthesis}"
            done = sum(1 for r in results if r["case"] == name and r["synthesis"] == synthesis)
            session = Path(tmp) / (label if args.repeats == 1 else f"{label}-{done + 1}")
            res = run_case(CASES[name], files, session, args.limit_shifted, synthesis, args.clean_s)
            res["wall_s"] = time.perf_counter() - began
            print(_row(res), flush=True)
            print(
                json.dumps(
                    {k: res[k] for k in ("case", "runs", "candidates", "synthesis_counts", "samples")},
                    default=str,
                )
            )
            results.append(res)
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    table = HEADER + "\n" + "\n".join(_row(r) for r in results)
    if args.repeats > 1:
        table += "\n\n" + _spread(results)
    print(table)
    if args.no_record:
        return
    limited = args.limit_shifted is not None
    title = (
        f"Synthesis for weak slices: loop suite with {args.limit_shifted} shifted rows"
        if limited
        else "Loop on unseen data (loop suite)"
    )
    notes = (
        "Targets: promoted <= 5 min after the shift; >= 80% of the lost agreement recovered on the shifted "
        "source; other sources >= -1 pt accuracy; no promotion on clean traffic that lowers accuracy. "
        "Probe rows are never sent as traffic. Config: defaults + wiring + monitor.interval_s 5, "
        "policy.cooldown_s 0, policy.auto_promote true (monitor.window: the default). "
        f"Load average (1 min) at the start and end: {load[0]:.1f}, {os.getloadavg()[0]:.1f}."
    )
    record("loop_suite", title, command_line(), table, notes, data=results)


if __name__ == "__main__":
    main()
