"""When to redistill: thresholds, hysteresis, cooldown, daily budget and the ceiling rule.

A cycle *breaches* when overall agreement is below `policy.min_agreement`, ECE against the
teacher is above `policy.max_ece`, the drifted-feature share is above `policy.max_drift_share`,
or there is a weak slice. A run triggers after `policy.hysteresis` breaching cycles in a row,
unless blocked by: a run in progress or awaiting approval; the cooldown since the last run;
the daily budget (runs for a breach with no weak slice use at most half of it); or a
`ceiling_reached` verdict of the last run while neither the teachers, the weak-slice set nor
the drift share (by >= 0.1) changed since and no new rows of the weak
slices arrived (bounded by `policy.ceiling_retries`); or, for a breach with no weak slice,
a run that answered the same window-wide breach while nothing changed since. A weak slice
with too few recent rows to train on and to hold out makes it *wait* for data instead. Every
decision is stored with the numbers it was made on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from distill_watchdog.config import PolicyConfig
from distill_watchdog.store import Store

ACTIVE_STATUSES = ("running", "pending")
DRIFT_CHANGE = 0.1


@dataclass
class Decision:
    action: str  # ok | hold | waiting | trigger | blocked
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def weak_slices(self) -> list[dict[str, Any]]:
        return list(self.numbers.get("weak_slices", []))


def breaches(cycle: dict[str, Any], cfg: PolicyConfig) -> tuple[list[str], dict[str, Any]]:
    """Which thresholds this cycle crosses, with the numbers."""
    overall = cycle.get("overall") or {}
    drift = ((cycle.get("drift") or {}).get("all") or {}).get("share")
    ece = (overall.get("teacher") or {}).get("ece")
    numbers = {
        "agreement": overall.get("agreement"),
        "ece": ece,
        "drift_share": drift,
        "weak_slices": cycle.get("weak_slices", []),
        "student_version": cycle.get("student_version"),
        "judged_slices": cycle.get("judged_slices"),
        "rows": cycle.get("rows", 0),
        "teacher_versions": cycle.get("teacher_versions", {}),
        "thresholds": cfg.model_dump(
            include={
                "min_agreement",
                "max_ece",
                "max_drift_share",
                "hysteresis",
                "cooldown_s",
                "max_runs_per_day",
            }
        ),
    }
    found = []
    if numbers["agreement"] is not None and numbers["agreement"] < cfg.min_agreement:
        found.append(f"agreement {numbers['agreement']:.3f} < {cfg.min_agreement:g}")
    if ece is not None and ece > cfg.max_ece:
        found.append(f"ECE {ece:.3f} > {cfg.max_ece:g}")
    if drift is not None and drift > cfg.max_drift_share:
        found.append(f"drift share {drift:.2f} > {cfg.max_drift_share:g}")
    if numbers["weak_slices"]:
        names = ", ".join(
            w["slice"] + (" (its rows left the window)" if w.get("carried") else "")
            for w in numbers["weak_slices"][:5]
        )
        found.append(f"weak slices: {names}")
    return found, numbers


def _streak(store: Store, hysteresis: int) -> int:
    """Breaching decisions immediately before this one (a trigger ends a streak)."""
    n = 0
    for d in store.recent_decisions(hysteresis):
        if d.action == "trigger" or not orjson.loads(d.numbers_json).get("breached"):
            break
        n += 1
    return n


def healthy_since(store: Store, labels: list[str], lookback: int = 500) -> dict[str, float | None]:
    """Per slice, the time of the newest decision whose cycle judged it (enough rows) and did not
    find it weak (None: none in `lookback`). A slice's rows after that are its changed
    rows. Per slice: a window-wide breach (agreement, drift) can last for days, and the time of
    the last decision with no breach at all would then count a slice's old rows as changed."""
    out: dict[str, float | None] = {label: None for label in labels}
    todo = set(labels)
    for d in store.recent_decisions(lookback):
        if not todo:
            break
        numbers = orjson.loads(d.numbers_json)
        if "weak_slices" not in numbers:  # not a judgement of the window (e.g. a skipped cycle)
            continue
        weak = {w["slice"] for w in numbers["weak_slices"]}
        judged = numbers.get("judged_slices")
        healthy = (todo - weak) if judged is None else (todo & set(judged)) - weak
        for label in healthy:
            out[label] = float(d.at)
        todo -= healthy
    return out


def changed_after(healthy_at: float | None, change_from: float | None) -> float | None:
    """The time after which a weak slice's rows count as changed: the cycle's change point
    (`from`) when it gave one, else when the slice was last seen healthy. The change point
    wins both ways: a slow slice may be judged healthy while its first bad rows do not yet
    show (`from` is earlier), and a busy one may send many good rows between its last healthy
    verdict and the change (`from` is later: those rows would dilute the seeds, the
    up-weighted rows and the gain's hold-out). None: its whole window."""
    if change_from is None:
        return healthy_at
    return change_from - 1e-6


def _need(cfg: PolicyConfig) -> int:
    return cfg.min_weak_train_rows + cfg.min_weak_holdout_rows


def _shortfall(numbers: dict[str, Any], cfg: PolicyConfig, key: str, unknown: int | None) -> dict[str, int]:
    """Weak slices with fewer than the rows a run needs (by `key`: recent rows, or rows since a
    run; `unknown` stands for a count the cycle did not give, None: not short)."""
    out = {}
    for w in numbers.get("weak_slices", []):
        have = w.get(key, unknown)
        if have is not None and int(have) < _need(cfg):
            out[w["slice"]] = int(have)
    return out


def _ceiling_verdict(detail: dict[str, Any]) -> bool:
    """Did the run's stop rule say its weak slices reached their ceiling? Per slice when the
    engine says so per slice (a slice with room left or too few rows is not at its ceiling)."""
    stop = detail.get("stop") or {}
    weak = [w["slice"] for w in (detail.get("trigger_numbers") or {}).get("weak_slices", [])]
    per_slice = stop.get("slices") or {}
    if weak and per_slice:
        mine = [r for key, r in per_slice.items() if any(w in key.split(",") for w in weak)]
        if mine:
            return all(r.get("verdict") == "ceiling_reached" for r in mine)
    return stop.get("verdict") == "ceiling_reached"


def _same_setup(then: dict[str, Any], numbers: dict[str, Any]) -> bool:
    same_teachers = then.get("teacher_versions") == numbers.get("teacher_versions")
    same_weak = {w["slice"] for w in then.get("weak_slices", [])} == {
        w["slice"] for w in numbers.get("weak_slices", [])
    }
    d_then, d_now = then.get("drift_share"), numbers.get("drift_share")
    same_drift = d_then is None or d_now is None or abs(d_now - d_then) < DRIFT_CHANGE
    return same_teachers and same_weak and same_drift


def _ceiling_blocks(store: Store, cfg: PolicyConfig, numbers: dict[str, Any]) -> str | None:
    """Why the ceiling rule blocks, or None. It blocks while nothing changed since the newest
    run's ceiling verdict; new rows of the weak slices release it, `policy.ceiling_retries`
    times in a row; after that only a teacher or weak-slice change does."""
    ceilings: list[str] = []
    for run in store.list_runs(20):
        detail = orjson.loads(run.detail_json)
        if run.status == "failed":
            continue
        if not _ceiling_verdict(detail) or not _same_setup(detail.get("trigger_numbers") or {}, numbers):
            break
        ceilings.append(run.id)
    if not ceilings:
        return None
    if len(ceilings) > cfg.ceiling_retries:
        return (
            f"ceiling reached in runs {', '.join(ceilings)}; waiting for a teacher or the weak slices "
            "to change"
        )
    short = _shortfall(numbers, cfg, "rows_since_run", 0)
    if short:
        counts = ", ".join(f"{k} {v} of {_need(cfg)}" for k, v in short.items())
        return f"ceiling reached in run {ceilings[0]}; waiting for new rows of the weak slices ({counts})"
    return None


def _window_wide_blocks(runs: list[Any], numbers: dict[str, Any]) -> str | None:
    """Why a breach with no weak slice waits, or None: the newest run answered the same
    window-wide breach (same teachers, no weak slice, drift within DRIFT_CHANGE) and nothing
    changed since. A student below `policy.min_agreement` everywhere may stay there after its
    best round; without this every cycle would spend the daily budget on it, leaving none for
    a slice that breaks later."""
    if numbers.get("weak_slices") or not runs:
        return None
    last = runs[0]
    then = orjson.loads(last.detail_json).get("trigger_numbers") or {}
    if last.status == "failed" or then.get("weak_slices") or not _same_setup(then, numbers):
        return None
    return (
        f"run {last.id} ({last.status}) answered this window-wide breach; waiting for a weak slice, "
        "the drift or a teacher to change"
    )


def _window_wide_today(runs: list[Any], now: float) -> int:
    """Policy runs of the last day that answered a breach with no weak slice. They may use half
    the daily budget: each promotion on clean traffic can release the next (a new student, a
    new reference and drift share), and a slice that breaks later must still find runs left."""
    count = 0
    for r in runs:
        if r.created_at < now - 86400 or r.trigger != "policy":
            continue
        if not (orjson.loads(r.detail_json).get("trigger_numbers") or {}).get("weak_slices"):
            count += 1
    return count


def _runs(store: Store) -> tuple[list[Any], list[Any]]:
    """Runs in progress, and the runs that count for cooldown and budget: a run that stopped
    for lack of data did not train, so it never holds back the next one."""
    runs = store.list_runs(50)
    busy = [r for r in runs if r.status in ACTIVE_STATUSES]
    counted = [r for r in runs if not orjson.loads(r.detail_json).get("waiting_for_data")]
    return busy, counted


def _gate(store: Store, cfg: PolicyConfig, why: str, numbers: dict[str, Any], now: float) -> Decision:
    """A breach that passed hysteresis: trigger, unless something blocks it or data is short."""
    busy, runs = _runs(store)
    last = runs[0] if runs else None
    used = sum(1 for r in runs if r.created_at >= now - 86400)
    if busy:
        return Decision("blocked", f"{why}; run {busy[0].id} is {busy[0].status}", numbers)
    if last is not None and now - last.created_at < cfg.cooldown_s:
        left = cfg.cooldown_s - (now - last.created_at)
        return Decision("blocked", f"{why}; cooldown ({left:.0f} s left)", numbers)
    if cfg.max_runs_per_day == 0:
        return Decision("blocked", f"{why}; runs are off (policy.max_runs_per_day: 0)", numbers)
    if used >= cfg.max_runs_per_day:
        return Decision("blocked", f"{why}; daily budget of {cfg.max_runs_per_day} runs used", numbers)
    share = max(1, cfg.max_runs_per_day // 2)
    if not numbers.get("weak_slices") and _window_wide_today(runs, now) >= share:
        return Decision(
            "blocked",
            f"{why}; runs with no weak slice used {share} of the daily budget of "
            f"{cfg.max_runs_per_day}: the rest is kept for weak slices",
            numbers,
        )
    waits = _window_wide_blocks(runs, numbers)
    if waits:
        return Decision("blocked", f"{why}; {waits}", numbers)
    ceiling = _ceiling_blocks(store, cfg, numbers)
    if ceiling:
        numbers["ceiling"] = True
        return Decision("blocked", f"{why}; {ceiling}", numbers)
    short = _shortfall(numbers, cfg, "recent_rows", None)
    if short:
        numbers["waiting_for_data"] = {"rows": short, "need": _need(cfg)}
        counts = ", ".join(f"{k} has {v}" for k, v in short.items())
        return Decision(
            "waiting",
            f"{why}; waiting for data: {counts} recent rows, a run needs {_need(cfg)} "
            f"({cfg.min_weak_train_rows} to train on, {cfg.min_weak_holdout_rows} to hold out)",
            numbers,
        )
    return Decision("trigger", why, numbers)


def decide(store: Store, cfg: PolicyConfig, cycle: dict[str, Any], now: float | None = None) -> Decision:
    """Decides on one cycle and stores the decision. Blocking (store reads)."""
    now = time.time() if now is None else now
    if cycle.get("outcome") != "ok":
        return Decision("ok", f"cycle {cycle.get('outcome')}: {cycle.get('reason', '')}")
    judged, active = cycle.get("student_version"), store.active_version()
    if judged and active and judged != active:
        # A cycle that began before a promotion judges a student no longer served: acting on it
        # would start a run for the new student on the old one's numbers.
        decision = Decision(
            "ok", f"cycle judged student {judged}, {active} is active now: not acted on", {"breached": False}
        )
        store.add_decision(cycle.get("cycle_id"), decision.action, decision.reason, decision.numbers)
        return decision
    found, numbers = breaches(cycle, cfg)
    numbers["breached"] = bool(found)
    if not found:
        decision = Decision("ok", "within thresholds", numbers)
    else:
        streak = _streak(store, cfg.hysteresis) + 1
        numbers["streak"] = streak
        why = "; ".join(found)
        if streak < cfg.hysteresis:
            decision = Decision("hold", f"{why} (cycle {streak} of {cfg.hysteresis})", numbers)
        else:
            decision = _gate(store, cfg, why, numbers, now)
    store.add_decision(cycle.get("cycle_id"), decision.action, decision.reason, decision.numbers)
    return decision
