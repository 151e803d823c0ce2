"""One monitor cycle (runs in the monitor's child process): window → metrics → drift → weak slices.

The result is stored as a `monitor_cycles` row and returned as a dict for the parent, which
sets the gauges, raises alerts and asks the policy.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from distill_watchdog.config import Settings
from distill_watchdog.loop.monitor.drift import Comparison, column_drift
from distill_watchdog.loop.monitor.memory import peak_rss_bytes, reset_peak_rss
from distill_watchdog.loop.monitor.reference import load_reference
from distill_watchdog.loop.monitor.stats import OTHER, bounded_slices, slice_table, weak_slices
from distill_watchdog.loop.monitor.window import Window, load_window
from distill_watchdog.loop.policy import changed_after, healthy_since
from distill_watchdog.registry import Registry
from distill_watchdog.store import Store
from distill_watchdog.store.tables import MonitorCycle


def _drift_rows(rows: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most `cap` of `rows` (indices), a uniform random sample without replacement, in order."""
    if cap is None or len(rows) <= cap:
        return rows
    return np.sort(rng.choice(rows, size=cap, replace=False))


def compute(
    settings: Settings, store: Store, registry: Registry, window: Window | None = None
) -> dict[str, Any]:
    """The cycle's numbers (no store writes): for the active student's rows in the window."""
    cfg = settings.monitor
    active = registry.active_version() or ""
    if window is None:
        # Only rows the active card's shape fits are read (another model's rows are skipped).
        card = registry.get(active).card if active else None
        width, classes = (card.num_features, len(card.classes)) if card else (None, None)
        window = load_window(store, settings, features=width, classes=classes)
    mine = window.student_versions == active
    w = window if bool(mine.all()) else window.take(np.flatnonzero(mine))
    out: dict[str, Any] = {
        "student_version": active,
        "rows": len(w),
        "teacher_versions": w.teacher_versions,
        "no_teacher_rows": w.dropped_no_teacher,
        "window_bytes": window.nbytes,
    }
    if len(w) < cfg.min_rows:
        out.update(outcome="skipped", reason=f"{len(w)} usable rows < monitor.min_rows {cfg.min_rows}")
        return out
    slices = bounded_slices(w, settings.slices.max_values_per_key, settings.slices.max_slices)
    table = slice_table(w, slices)
    out["slices"] = table
    out["overall"] = table["all"]
    since = healthy_since(store, list(slices))
    recent = {label: w.at > t for label, t in since.items() if t is not None}
    out["weak_slices"] = weak_slices(w, table, slices, settings.policy.min_samples, recent)
    # Slices with the rows to be judged: only for them does "not weak" mean healthy.
    enough = settings.policy.min_samples
    out["judged_slices"] = [
        label for label in slices if not label.endswith(OTHER) and table[label]["n"] >= enough
    ]
    _count_new_rows(store, w, slices, out["weak_slices"], since)
    out["weak_slices"] += _carried(store, settings, active, out)
    reference = load_reference(settings, registry, active) if active else None
    if reference is None:
        out["drift"] = None
    else:
        out["drift"] = _drift(settings, w, slices, reference, registry.get(active).card.feature_names)
    out["outcome"] = "ok"
    return out


def _drift(
    settings: Settings,
    w: Window,
    slices: dict[str, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    names: list[str] | None,
) -> dict[str, Any]:
    """Drift of the whole window and of each slice with `monitor.min_rows` rows, each on at most
    `monitor.drift_sample` of its rows (the stat tests' cost grows with the rows they get)."""
    cfg = settings.monitor
    ref_x, ref_pred = reference
    pred = w.student.argmax(1)
    rng = np.random.default_rng(len(w))
    scopes = {"all": np.arange(len(w))}
    scopes.update({label: np.flatnonzero(m) for label, m in slices.items() if m.sum() >= cfg.min_rows})
    drift = {}
    for label, rows in scopes.items():
        idx = _drift_rows(rows, cfg.drift_sample, rng)
        drift[label] = column_drift(
            Comparison(ref_x, ref_pred, w.x[idx], pred[idx], cfg.drift_method, cfg.drift_threshold, names)
        )
        drift[label]["window_rows"] = int(len(rows))
    return drift


def _count_new_rows(
    store: Store,
    w: Window,
    slices: dict[str, np.ndarray],
    weak: list[dict[str, Any]],
    since: dict[str, float | None],
) -> None:
    """Per weak slice: its changed rows (`recent_rows`: since its change point, else since the
    loop last saw it healthy; what a run would train and judge on, counted in the store when
    they began before the window) and its rows since the newest run began (`rows_since_run`,
    new data the ceiling rule waits for)."""
    if not weak:
        return
    run_at = _newest_run_at(store)
    oldest = float(w.at.min()) if len(w) else None
    for entry in weak:
        m = slices[entry["slice"]]
        after = changed_after(since.get(entry["slice"]), entry.get("from"))
        if after is None:
            entry["recent_rows"] = int(m.sum())
        elif oldest is not None and after < oldest:  # the window begins after them: a run reads further
            entry["recent_rows"] = store.count_slice_rows(entry["slice"], after)
        else:
            entry["recent_rows"] = int((m & (w.at > after)).sum())
        entry["rows_since_run"] = int((m & (w.at > run_at)).sum()) if run_at else int(m.sum())


def _newest_run_at(store: Store) -> float | None:
    """When the newest run that did not fail began (a failed run trained on nothing)."""
    runs = [r for r in store.list_runs(5) if r.status != "failed"]
    return runs[0].created_at if runs else None


def _last_judgement(store: Store) -> dict[str, Any] | None:
    """The numbers of the newest decision that judged a window (a skipped cycle has none)."""
    for d in store.recent_decisions(20):
        numbers = orjson.loads(d.numbers_json)
        if "weak_slices" in numbers:
            return numbers
    return None


def _carried(store: Store, settings: Settings, active: str, out: dict[str, Any]) -> list[dict[str, Any]]:
    """Weak slices of the last judgement that this cycle cannot judge (fewer than
    `policy.min_samples` of their rows left in the window), carried forward as `carried`.

    A slow slice may send its changed rows and go quiet: its rows then leave the window long
    before a run has used them (a rejected run, a blocked one), and the slice would be neither
    weak nor healthy. Carried while the same student serves and its changed rows (since its
    change point) are all within the newest `policy.max_train_rows` rows a run reads."""
    last = _last_judgement(store)
    if last is None or last.get("student_version") != active:
        return []
    seen = set(out["judged_slices"]) | {e["slice"] for e in out["weak_slices"]}
    run_at = _newest_run_at(store)
    carried = []
    for entry in last["weak_slices"]:
        label, start = entry["slice"], entry.get("from")
        if label in seen or start is None:
            continue
        if store.count_samples(quarantined=False, after=start) > settings.policy.max_train_rows:
            continue
        changed = store.count_slice_rows(label, changed_after(None, start) or start)
        since_run = changed if run_at is None else store.count_slice_rows(label, run_at)
        carried.append({**entry, "carried": True, "recent_rows": changed, "rows_since_run": since_run})
    return carried


def run_cycle(settings: Settings, store: Store, registry: Registry) -> dict[str, Any]:
    began = time.perf_counter()
    reset_peak_rss()
    result = compute(settings, store, registry)
    result["seconds"] = time.perf_counter() - began
    result["peak_rss_bytes"] = peak_rss_bytes()
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
