"""Candidates that can grow: wider students when the first candidate is capacity-limited.

When the engine's stop rule says the run's student plateaued and a wider probe fits the
teacher clearly better (`capacity_limited`), up to `policy.wider_candidates` wider variants
of the same family, each within `policy.max_params_factor` x the parent's parameters, are
trained on the same job folder (from scratch: a wider network cannot start from the parent's
weights). The gates then judge every candidate and the best that passes is promoted.

`python -m distill_watchdog.loop.widen --settings FILE --run ID` writes `job-wide-N.yaml` for
each variant and `widen.json` (the variants, or why there are none): a child process, since
sizing the variants builds torch models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from distill_watchdog.config import PolicyConfig

WIDE_PREFIX = "wide-"


def stop_diagnosis(result: dict[str, Any]) -> str | None:
    """The engine's training diagnosis (`under_trained|capacity_limited|converged`), if any."""
    stop = result.get("stop") or {}
    return stop.get("training") or stop.get("verdict")


def plan(run_dir: Path, cfg: PolicyConfig) -> dict[str, Any]:
    """Writes one job file per wider variant; returns what was decided and why."""
    result = json.loads((run_dir / "out" / "result.json").read_text())
    diagnosis = stop_diagnosis(result)
    if diagnosis != "capacity_limited" or cfg.wider_candidates == 0:
        return {"diagnosis": diagnosis, "variants": [], "why": "the candidate is not capacity-limited"}
    from distill_engine import zoo

    widen = getattr(zoo, "wider_variants", None)
    if widen is None:
        return {"diagnosis": diagnosis, "variants": [], "why": "this engine cannot widen students"}
    job = yaml.safe_load((run_dir / "job.yaml").read_text())
    card = json.loads((run_dir / "out" / "card.json").read_text())
    student = job["student"]
    variants = widen(
        student["factory"],
        dict(student.get("kwargs") or {}),
        int(card["num_features"]),
        len(card["classes"]),
        max_params_factor=cfg.max_params_factor,
        k=cfg.wider_candidates,
    )
    for i, variant in enumerate(variants, 1):
        wide = {**job, "student": {"factory": variant["factory"], "kwargs": variant["kwargs"]}}
        (run_dir / f"job-{WIDE_PREFIX}{i}.yaml").write_text(yaml.safe_dump(wide, sort_keys=False))
        variant["job"] = f"job-{WIDE_PREFIX}{i}.yaml"
        variant["out"] = f"out-{WIDE_PREFIX}{i}"
    why = "capacity-limited: wider variants within policy.max_params_factor"
    return {"diagnosis": diagnosis, "variants": variants, "why": why if variants else "nothing to widen"}


def main() -> None:
    from distill_watchdog.loop.build import child_args
    from distill_watchdog.store import Store

    settings, run_id = child_args()
    run = Store(settings.store_url).get_run(run_id)
    if run is None:
        raise SystemExit(f"no run {run_id}")
    run_dir = Path(run.run_dir)
    (run_dir / "widen.json").write_text(json.dumps(plan(run_dir, settings.policy), default=str))


if __name__ == "__main__":
    main()
