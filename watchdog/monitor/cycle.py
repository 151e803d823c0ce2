"""One monitor cycle (runs in the monitor's child process): window → metrics → drift → weak slices.

The result is stored as a `monitor_cycles` row and returned as a dict for the parent, which
sets the gauges, raises alerts and asks the policy.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..config import Settings
from ..policy import last_healthy_at
from ..registry import Registry
from ..store import Store
from ..store.tables import MonitorCycle
from .drift import column_drift
from .reference import load_reference
from .stats import bounded_slices, slice_table, weak_slices
from .window import Window, load_window


def _only(w: Window, keep: np.ndarray) -> Window:
    idx = np.flatnonzero(keep)
    return Window(
        w.x[idx],
        w.student[idx],
        w.teacher[idx],
        w.labels[idx],
        [w.slices[i] for i in idx],
        w.at[idx],
        w.student_versions[idx],
        w.teacher_versions,
        w.dropped_no_teacher,
    )


def compute(
    settings: Settings, store: Store, registry: Registry, window: Window | None = None
) -> dict[str, Any]:
    """The cycle's numbers (no store writes): for the active student's rows in the window."""
    cfg = settings.monitor
    active = registry.active_version() or ""
    w = window if window is not None else load_window(store, settings)
    w = _only(w, w.student_versions == active) if len(w) else w
    out: dict[str, Any] = {
        "student_version": active,
        "rows": len(w),
        "teacher_versions": w.teacher_versions,
        "no_teacher_rows": w.dropped_no_teacher,
    }
    if len(w) < cfg.min_rows:
        out.update(outcome="skipped", reason=f"{len(w)} usable rows < monitor.min_rows {cfg.min_rows}")
        return out
    slices = bounded_slices(w, settings.slices.max_values_per_key, settings.slices.max_slices)
    table = slice_table(w, slices)
    out["slices"] = table
    out["overall"] = table["all"]
    out["weak_slices"] = weak_slices(w, table, slices, settings.policy.min_samples)
    _count_new_rows(store, w, slices, out["weak_slices"])
    reference = load_reference(settings, registry, active) if active else None
    if reference is None:
        out["drift"] = None
    else:
        names = registry.get(active).card.feature_names
        ref_x, ref_pred = reference
        pred = w.student.argmax(1)
        drift = {
            "all": column_drift(ref_x, ref_pred, w.x, pred, cfg.drift_method, cfg.drift_threshold, names)
        }
        for label in table:
            if label == "all":
                continue
            m = slices[label]
            if m.sum() >= cfg.min_rows:
                drift[label] = column_drift(
                    ref_x, ref_pred, w.x[m], pred[m], cfg.drift_method, cfg.drift_threshold, names
                )
        out["drift"] = drift
    out["outcome"] = "ok"
    return out


def _count_new_rows(
    store: Store, w: Window, slices: dict[str, np.ndarray], weak: list[dict[str, Any]]
) -> None:
    """Per weak slice: its rows since the loop last saw it healthy (`recent_rows`, what a run
    would train and judge on) and since the newest run began (`rows_since_run`, new data the
    ceiling rule waits for)."""
    if not weak:
        return
    healthy_at = last_healthy_at(store)
    runs = [r for r in store.list_runs(5) if r.status != "failed"]
    run_at = runs[0].created_at if runs else None
    for entry in weak:
        m = slices[entry["slice"]]
        entry["recent_rows"] = int((m & (w.at > healthy_at)).sum()) if healthy_at else int(m.sum())
        entry["rows_since_run"] = int((m & (w.at > run_at)).sum()) if run_at else int(m.sum())


def run_cycle(settings: Settings, store: Store, registry: Registry) -> dict[str, Any]:
    began = time.perf_counter()
    result = compute(settings, store, registry)
    result["seconds"] = time.perf_counter() - began
    row = store.add_cycle(
        MonitorCycle(
            at=time.time(),
            student_version=result["student_version"],
            rows=result["rows"],
            seconds=result["seconds"],
            outcome=result["outcome"],
            summary_json=_dumps(result),
        )
    )
    result["cycle_id"] = row.id
    return result


def _dumps(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
