"""When to redistill: thresholds, hysteresis, cooldown, daily budget and the ceiling rule.

A cycle *breaches* when overall agreement is below `policy.min_agreement`, ECE against the
teacher is above `policy.max_ece`, the drifted-feature share is above `policy.max_drift_share`,
or there is a weak slice. A run triggers after `policy.hysteresis` breaching cycles in a row,
unless blocked by: a run in progress or awaiting approval; the cooldown since the last run;
the daily budget; or a `ceiling_reached` verdict of the last run while neither the teachers,
the weak-slice set nor the drift share (by >= 0.1) changed since. Every decision is stored
with the numbers it was made on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import PolicyConfig
from .store import Store

ACTIVE_STATUSES = ("running", "pending")
DRIFT_CHANGE = 0.1


@dataclass
class Decision:
    action: str  # ok | hold | trigger | blocked
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
        names = ", ".join(w["slice"] for w in numbers["weak_slices"][:5])
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


def _ceiling_blocks(store: Store, numbers: dict[str, Any]) -> str | None:
    for run in store.list_runs(10):
        if run.status in ("failed",):
            continue
        detail = orjson.loads(run.detail_json)
        if (detail.get("stop") or {}).get("verdict") != "ceiling_reached":
            return None
        then = detail.get("trigger_numbers") or {}
        same_teachers = then.get("teacher_versions") == numbers.get("teacher_versions")
        same_weak = {w["slice"] for w in then.get("weak_slices", [])} == {
            w["slice"] for w in numbers.get("weak_slices", [])
        }
        d_then, d_now = then.get("drift_share"), numbers.get("drift_share")
        same_drift = d_then is None or d_now is None or abs(d_now - d_then) < DRIFT_CHANGE
        if same_teachers and same_weak and same_drift:
            return f"ceiling reached in run {run.id}; waiting for the data or a teacher to change"
        return None
    return None


def decide(store: Store, cfg: PolicyConfig, cycle: dict[str, Any], now: float | None = None) -> Decision:
    """Decides on one cycle and stores the decision. Blocking (store reads)."""
    now = time.time() if now is None else now
    if cycle.get("outcome") != "ok":
        return Decision("ok", f"cycle {cycle.get('outcome')}: {cycle.get('reason', '')}")
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
            decision = Decision("trigger", why, numbers)
            runs = store.list_runs(50)
            busy = [r for r in runs if r.status in ACTIVE_STATUSES]
            last = runs[0] if runs else None
            used = sum(1 for r in runs if r.created_at >= now - 86400)
            if busy:
                decision = Decision("blocked", f"{why}; run {busy[0].id} is {busy[0].status}", numbers)
            elif last is not None and now - last.created_at < cfg.cooldown_s:
                left = cfg.cooldown_s - (now - last.created_at)
                decision = Decision("blocked", f"{why}; cooldown ({left:.0f} s left)", numbers)
            elif cfg.max_runs_per_day == 0:
                decision = Decision("blocked", f"{why}; runs are off (policy.max_runs_per_day: 0)", numbers)
            elif used >= cfg.max_runs_per_day:
                decision = Decision(
                    "blocked", f"{why}; daily budget of {cfg.max_runs_per_day} runs used", numbers
                )
            else:
                ceiling = _ceiling_blocks(store, numbers)
                if ceiling:
                    numbers["ceiling"] = True
                    decision = Decision("blocked", f"{why}; {ceiling}", numbers)
    store.add_decision(cycle.get("cycle_id"), decision.action, decision.reason, decision.numbers)
    return decision
