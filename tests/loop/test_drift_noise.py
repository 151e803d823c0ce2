"""Drift that does not fire on noise: clean held-out rows with tiny noise start no run.

Real parts: scikit-learn's digits (shipped with it, 8x8 images with values 0..16), a real
ONNX student, a real store, Evidently's stat tests, the policy. The student and the teacher
agree, so only drift could breach.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from distill_watchdog.config import load_settings
from distill_watchdog.loop import policy
from distill_watchdog.loop.monitor.cycle import run_cycle
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store

from .helpers import softmax
from support import SampleRecord, add_samples, mlp_reference, mlp_weights, write_model


def _daemon_parts(tmp_path: Path, **monitor: object) -> tuple:
    x = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    np.savez(tmp_path / "ref.npz", x=x[order[:1200]])
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        monitor={"reference": str(tmp_path / "ref.npz"), **monitor},
        policy={"hysteresis": 1, "cooldown_s": 0},
    )
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir)
    info = registry.register_files(*write_model(tmp_path / "models", num_features=64))
    registry.record_activation(info.version, actor="test")
    held = x[order[1200:]] + rng.normal(0, 0.01, size=(len(order) - 1200, 64)).astype(np.float32)
    # Confident answers of the same model: student and teacher agree, calibration is fine.
    probs = softmax(20 * mlp_reference(held, mlp_weights(64, 10, seed=0)))
    now = time.time()
    add_samples(
        store,
        [
            SampleRecord(
                id=uuid.uuid4().hex,
                request_id=uuid.uuid4().hex,
                at=now - len(held) + i,
                features=held[i],
                student_probs=probs[i],
                student_version=info.version,
                slices={"source": "abc"[i % 3]},
                quarantined=False,
                teachers={"big": ("v1", probs[i], False)},
            )
            for i in range(len(held))
        ],
    )
    return settings, store, registry


def test_clean_rows_with_small_noise_start_no_run(tmp_path: Path) -> None:
    settings, store, registry = _daemon_parts(tmp_path)
    cycle = run_cycle(settings, store, registry)
    drift = cycle["drift"]["all"]
    assert drift["method"] == "auto" and drift["share"] <= settings.policy.max_drift_share
    decision = policy.decide(store, settings.policy, cycle)
    assert decision.action == "ok", decision.reason


def test_psi_stays_an_option_and_flags_the_same_noise(tmp_path: Path) -> None:
    """The former default (PSI at 0.1) on the same rows: the noise reads as drift and a run would start."""
    settings, store, registry = _daemon_parts(tmp_path, drift_method="psi", drift_threshold=0.1)
    cycle = run_cycle(settings, store, registry)
    assert cycle["drift"]["all"]["share"] > settings.policy.max_drift_share
    assert policy.decide(store, settings.policy, cycle).action == "trigger"
