"""Candidates that can grow: wider students when the first candidate is capacity-limited.

When the engine's stop rule says the run's student plateaued and a wider probe fits the
teacher clearly better (`capacity_limited`), the first candidate lost on a slice (it fails
the regression gate), or it left part of a weak slice's gap open (its gain on the slice's
changed hold-out rows may be under `CLOSED_SHARE` of the gap the cycle measured: the lower
end of the gain's paired 95% interval is), up to
`policy.wider_candidates` wider variants of the same family, each within
`policy.max_params_factor` x the parent's parameters, are trained on the same job folder.
The gates then judge every candidate and the best that passes is promoted.

With a warm start, each variant grows from the parent (`student.init_from`: the engine keeps
the parent's units and their function, new units start silent), so it keeps what the parent
learned from rows no longer in the window; a variant the parent cannot grow into (another
layout) starts from scratch, and `widen.json` says so.

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
# A first candidate that may have closed less of a weak slice's gap than this (the lower end
# of its gain's 95% interval is under it) also gets the wider variants: the gates choose by
# gain, so a variant that closes more can only help. On a few dozen changed rows the point
# estimate alone passes candidates whose gain is mostly noise.
CLOSED_SHARE = 0.8


def stop_diagnosis(result: dict[str, Any]) -> str | None:
    """The engine's training diagnosis (`under_trained|capacity_limited|converged`), if any."""
    stop = result.get("stop") or {}
    return stop.get("training") or stop.get("verdict")


def plan(
    run_dir: Path, cfg: PolicyConfig, traded: list[str] | None = None, open_gaps: list[str] | None = None
) -> dict[str, Any]:
    """Writes one job file per wider variant; returns what was decided and why.

    `traded`: slices the first candidate lost on (the regression gate's test) while it trained
    for the weak ones: a student that cannot hold both is short of capacity too, whatever its
    own stop rule saw. `open_gaps`: weak slices whose gap it left partly open: a small
    student often learns a few changed rows only at a cost it cannot pay elsewhere, and a
    wider one grown from it may close the gap.
    """
    result = json.loads((run_dir / "out" / "result.json").read_text())
    diagnosis = stop_diagnosis(result)
    if cfg.wider_candidates == 0 or (diagnosis != "capacity_limited" and not traded and not open_gaps):
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
    parent = student.get("init_from")
    for i, variant in enumerate(variants, 1):
        wide = {**job, "student": {"factory": variant["factory"], "kwargs": variant["kwargs"]}}
        if parent:
            variant["grown_from"], why_not = _growable(variant, parent, card)
            if variant["grown_from"]:
                wide["student"]["init_from"] = parent
            else:
                variant["from_scratch"] = why_not
        (run_dir / f"job-{WIDE_PREFIX}{i}.yaml").write_text(yaml.safe_dump(wide, sort_keys=False))
        variant["job"] = f"job-{WIDE_PREFIX}{i}.yaml"
        variant["out"] = f"out-{WIDE_PREFIX}{i}"
    why = "capacity-limited: wider variants within policy.max_params_factor"
    if diagnosis != "capacity_limited" and traded:
        why = f"the candidate lost on {', '.join(traded)}: wider variants within the budget"
    elif diagnosis != "capacity_limited":
        why = f"the candidate left open {', '.join(open_gaps or [])}: wider variants within the budget"
    out = {"diagnosis": diagnosis, "variants": variants, "why": why if variants else "nothing to widen"}
    if traded:
        out["traded"] = traded
    if open_gaps:
        out["open_gaps"] = open_gaps
    return out


def _growable(variant: dict[str, Any], parent: str, card: dict[str, Any]) -> tuple[str | None, str]:
    """(parent path, "") when the variant can grow from the parent, else (None, why not)."""
    from distill_engine.errors import JobError
    from distill_engine.warm import load_onnx_weights
    from distill_engine.zoo import build_model

    num_features = int(card["num_features"])
    model = build_model(variant["factory"], variant["kwargs"], num_features, len(card["classes"]))
    try:
        load_onnx_weights(model, parent, num_features, grow=True)
    except JobError as exc:
        return None, str(exc)
    return parent, ""


def left_open(row: dict[str, Any], gap: float) -> bool:
    """Whether a gates table row's gain may fall short of CLOSED_SHARE of the cycle's gap."""
    return bool(row["ci"][0] < CLOSED_SHARE * gap)


def first_candidate(settings: Any, store: Any, run: Any) -> tuple[list[str], list[str]]:
    """How the first candidate did against the parent: the slices on which it fails the
    regression gate (hold-out or frozen set), and the weak slices whose gap it left partly
    open (the lower end of the gain's 95% interval on the changed hold-out rows under
    CLOSED_SHARE of the gap in the run's trigger)."""
    from distill_watchdog.card import parse_card
    from distill_watchdog.loop.finish import _frozen, _holdout
    from distill_watchdog.loop.gates import changed_key, judge
    from distill_watchdog.registry import Registry
    from distill_watchdog.runtime import load_model

    run_dir = Path(run.run_dir)
    out = run_dir / "out"
    if not (out / "student.onnx").exists():
        return [], []
    parent = Registry(store, settings.models_dir, ort_threads=1).load(run.parent_version)
    card = parse_card(json.loads((out / "card.json").read_text()))
    model = load_model((out / "student.onnx").read_bytes(), card, "out", threads=1)
    hold = _holdout(run_dir / "holdout.npz")
    sets = [hold]
    frozen = _frozen(store, settings)
    if frozen is not None and frozen.x.shape[1] == hold.x.shape[1]:
        sets.append(frozen)
    cfg = settings.policy
    pairs = [(es, parent.predict_proba(es.x), model.predict_proba(es.x)) for es in sets]
    verdict = judge(pairs, [], cfg.min_gain, cfg.max_regression, cfg.max_ece)
    failed = [g for g in verdict["failed"] if g["gate"] == "max_regression"]
    traded = sorted({f"{g['slice']} ({g['set']} {g['change']:+.3f})" for g in failed})
    entries = (json.loads(run.detail_json or "{}").get("trigger_numbers") or {}).get("weak_slices", [])
    table = verdict["tables"].get("holdout", {})
    open_gaps = []
    for entry in entries:
        row = table.get(changed_key(entry["slice"]), table.get(entry["slice"]))
        gap = entry.get("gap")
        if row is not None and gap is not None and left_open(row, gap):
            gain = f"gain {row['change']:+.3f} [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]"
            open_gaps.append(f"{entry['slice']} ({gain} of gap {gap:.3f})")
    return traded, open_gaps


def main() -> None:
    from distill_watchdog.loop.build import child_args
    from distill_watchdog.store import Store

    settings, run_id = child_args()
    run = Store(settings.store_url).get_run(run_id)
    if run is None:
        raise SystemExit(f"no run {run_id}")
    run_dir = Path(run.run_dir)
    store = Store(settings.store_url)
    traded, open_gaps = first_candidate(settings, store, run)
    planned = plan(run_dir, settings.policy, traded, open_gaps)
    (run_dir / "widen.json").write_text(json.dumps(planned, default=str))


if __name__ == "__main__":
    main()
