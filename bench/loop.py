"""Figures of the closed loop (issue 5), appended to docs/BENCHMARKS.md.

1. The demo scenario (MNIST-1D, three sensors, sensor c shifted): the shifted sensor's
   agreement with the teacher before the shift, after it, after promotion; the other
   sensors' change; time from the shift to the promotion.
2. Monitor cycle wall time on a 50k-row window (the cycle's own code, imports excluded).
3. Serving p99 with wrk while monitor cycles run back to back in the daemon's child
   process, against the same daemon idle (no cycles yet), in the same run.

Usage: .venv/bin/python bench/loop.py [--quick] [--skip-demo]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, VENV_BIN, Child, append_section, command_line, free_port, warm, wrk

sys.path.insert(0, str(ROOT / "tests"))
from support import mlp_reference, mlp_weights, write_model

ROWS = 50_000


def seed_store(url: str, version: str, n: int, seed: int = 0) -> None:
    """n sampled rows of three sensors, answered by the seed-0 student and a seed-1 teacher."""
    import uuid

    from distill_watchdog.store import SampleRecord, Store

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    rng = np.random.default_rng(seed)
    store = Store(url)
    now = time.time()
    for start in range(0, n, 5000):
        m = min(5000, n - start)
        x = rng.normal(size=(m, 40)).astype(np.float32)
        x[2::3] += 0.5  # sensor c drifts
        s = softmax(mlp_reference(x, mlp_weights(40, 10, seed=0)))
        t = softmax(mlp_reference(x, mlp_weights(40, 10, seed=1)))
        store.add_samples(
            [
                SampleRecord(
                    id=uuid.uuid4().hex,
                    request_id=uuid.uuid4().hex,
                    at=now - n + start + i,
                    features=x[i].round(5),
                    student_probs=s[i].round(6),
                    student_version=version,
                    slices={"sensor": "abc"[i % 3]},
                    quarantined=False,
                    teachers={"big": ("v1", t[i].round(6), False)},
                )
                for i in range(m)
            ]
        )
    store.close()


def cycle_and_latency(work: Path, seconds: int) -> dict[str, float]:
    """Cycle wall time on a 50k window; p99 idle vs during back-to-back cycles (one daemon)."""
    from distill_watchdog.config import load_settings
    from distill_watchdog.monitor.cycle import run_cycle
    from distill_watchdog.registry import Registry
    from distill_watchdog.store import Store

    model, card = write_model(work / "models")
    np.savez(work / "reference.npz", x=np.random.default_rng(9).normal(size=(5000, 40)).astype(np.float32))
    port = free_port()
    config = {
        "data_dir": str(work / "data"),
        "server": {"port": port, "admin_token": "bench", "log_format": "json"},
        "student": {"model": str(model), "card": str(card)},
        "teachers": [{"name": "big", "kind": "onnx", "location": str(model)}],
        "sampling": {"rate": 0.0},
        "monitor": {
            "interval_s": 1.0,
            "window": ROWS,
            "min_rows": 100,
            "reference": str(work / "reference.npz"),
            "leader_poll_s": 0.5,
        },
        "policy": {"min_agreement": 0.0, "max_ece": 1.0, "max_drift_share": 1.0, "cooldown_s": 1e9},
    }
    path = work / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    body = json.dumps({"inputs": np.random.default_rng(0).normal(size=(1, 40)).round(4).tolist()}).encode()
    argv = [str(VENV_BIN / "distill-watchdog"), "serve", "--config", str(path)]
    out: dict[str, float] = {}
    with Child(argv, port, ready="/v2/health/ready") as child:
        url = f"{child.url}/v1/predict"
        warm(url, body)
        idle = wrk(url, body, connections=8, seconds=seconds)
        version = httpx.get(f"{child.url}/admin/models", headers={"Authorization": "Bearer bench"}).json()[
            "active"
        ]
        seed_store(settings.store_url, version, ROWS)

        def cycles() -> float:
            total = 0.0
            for line in httpx.get(f"{child.url}/metrics").text.splitlines():
                if line.startswith("watchdog_monitor_cycles_total{"):
                    total += float(line.rsplit(" ", 1)[1]) if 'outcome="ok"' in line else 0.0
            return total

        deadline = time.monotonic() + 300
        while cycles() < 1 and time.monotonic() < deadline:  # the child is warm (imports done)
            time.sleep(0.5)
        before = cycles()
        busy = wrk(url, body, connections=8, seconds=seconds)
        during = cycles() - before
        out.update(
            idle_p99_ms=idle.p99_ms,
            busy_p99_ms=busy.p99_ms,
            idle_rps=idle.rps,
            busy_rps=busy.rps,
            cycles_during=during,
        )
    # The cycle itself, in this process (imports excluded), on the same 50k rows.
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)
    run_cycle(settings, store, registry)  # warm: imports, reference predictions
    began = time.perf_counter()
    result = run_cycle(settings, store, registry)
    out["cycle_s"] = time.perf_counter() - began
    out["cycle_rows"] = result["rows"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the demo's quick scenario")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    rows = []
    notes = []
    if not args.skip_demo:
        from distill_watchdog.demo import QUICK, SHIFTED, Scenario, run_scenario

        with tempfile.TemporaryDirectory(prefix="wd-loop-") as tmp:
            res = run_scenario(Path(tmp), QUICK if args.quick else Scenario(), free_port())
        b, a = res["before"], res["after"]
        rows += [
            f"| shifted sensor {SHIFTED}: agreement before shift | {b[SHIFTED]:.1%} | |",
            f"| shifted sensor {SHIFTED}: after shift (old student) | {b['c-shifted']:.1%} | |",
            f"| shifted sensor {SHIFTED}: after promotion | {a['c-shifted']:.1%} | |",
            f"| share of lost agreement recovered | {res['recovered']:.0%} | ≥ 80% |",
        ]
        rows += [
            f"| sensor {s}: change after promotion | {100 * d:+.1f} pt | > −1 pt |"
            for s, d in res["others_change"].items()
        ]
        rows.append(f"| time from shift to promotion | {res['shift_to_promotion_s']:.0f} s | |")
        notes.append(f"Demo scenario: {'quick' if args.quick else 'full'}; run {res['run']['id']}.")
    with tempfile.TemporaryDirectory(prefix="wd-cycle-") as tmp:
        fig = cycle_and_latency(Path(tmp), args.seconds)
    ratio = fig["busy_p99_ms"] / fig["idle_p99_ms"] if fig["idle_p99_ms"] else float("nan")
    rows += [
        f"| monitor cycle wall time, {fig['cycle_rows']:,}-row window | {fig['cycle_s']:.1f} s | |",
        f"| serving p99 idle | {fig['idle_p99_ms']:.2f} ms ({fig['idle_rps']:.0f} req/s) | |",
        f"| serving p99 while monitor cycles run back to back "
        f"({fig['cycles_during']:.0f} completed in the window) "
        f"| {fig['busy_p99_ms']:.2f} ms ({fig['busy_rps']:.0f} req/s) | |",
        f"| p99 during / idle | {ratio:.2f}× | ≤ 1.3× |",
    ]
    table = "| figure | value | target |\n|---|---|---|\n" + "\n".join(rows)
    print(table)
    append_section("Closed loop (bench/loop.py)", command_line(), table, "\n".join(notes))


if __name__ == "__main__":
    main()
