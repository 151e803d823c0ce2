"""Window metrics per slice and weak-slice selection, on the engine's metric functions."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from distill_engine import metrics as M
from distill_watchdog.loop.monitor.window import Window

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest for small n and for p near 0 or 1."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _f(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


@dataclass
class RowTerms:
    """Each row's metric terms against the teacher, computed once for the window: the window and
    every slice (subsets of its rows) then only average their rows' terms, with the same
    numbers as computing each subset from its probabilities."""

    conf: np.ndarray  # the student's top probability
    agree: np.ndarray  # the student's top class is the teacher's
    kl: np.ndarray  # KL(teacher || student)
    brier: np.ndarray  # vs the teacher's top class
    log_likelihood: np.ndarray  # of the teacher's top class

    @classmethod
    def of(cls, student: np.ndarray, teacher: np.ndarray) -> RowTerms:
        target = teacher.argmax(1)
        return cls(
            conf=student.max(1),
            agree=student.argmax(1) == target,
            kl=M.kl_rows(teacher, student),
            brier=M.brier_rows(student, target),
            log_likelihood=M.log_likelihood_rows(student, target),
        )


def block(
    student: np.ndarray,
    teacher: np.ndarray,
    labels: np.ndarray,
    terms: RowTerms | None = None,
    rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Agreement, KL(teacher||student), calibration vs teacher and vs labels, estimated accuracy.

    `rows` (a boolean mask): only those rows, with `terms` already theirs (a slice's share of
    the window's `RowTerms`), so a slice copies no probabilities.
    """
    rows = np.ones(len(labels), bool) if rows is None else rows
    n = int(rows.sum())
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out
    t = terms or RowTerms.of(student, teacher)
    lo, hi = wilson(float(t.agree.sum()), n)
    correct = t.agree.astype(np.float64)
    out.update(
        agreement=float(t.agree.mean()),
        agreement_ci=[lo, hi],
        kl=_f(np.mean(t.kl)),
        estimated_accuracy=float(t.conf.mean()),
        teacher={
            "ece": _f(M.ece_of(t.conf, correct)),
            "ece_adaptive": _f(M.ece_adaptive_of(t.conf, correct)),
            "brier": _f(np.mean(t.brier)),
            "nll": _f(-np.mean(t.log_likelihood)),
        },
    )
    classes = student.shape[1]
    known = rows & (labels >= 0) & (labels < classes)
    out["labelled"] = int(known.sum())
    invalid = int((rows & ((labels < -1) | (labels >= classes))).sum())
    if invalid:  # stored before labels were checked, or for a student with more classes: skipped
        out["invalid_labels"] = invalid
    if known.any():
        vs_labels = M.summary(student[known], labels[known])
        out["labels"] = {k: _f(vs_labels[k]) for k in ("accuracy", "ece", "ece_adaptive", "brier", "nll")}
    return out


OTHER = "(other)"


def bounded_slices(w: Window, max_per_key: int, max_slices: int) -> dict[str, np.ndarray]:
    """Each slice label a cycle computes, with its rows (boolean mask), within two bounds.

    Per key, the `max_per_key` values with most rows keep their label and the key's other rows
    form `key=(other)`; of all those labels, the `max_slices` with most rows are kept and the
    rows of the rest form `(other)`. Clients choose slice values: without a bound, a cycle's
    time and its stored summary grew with the number of distinct values sent.
    """
    per_kind = np.bincount(w.slice_codes, minlength=len(w.slice_kinds))
    present = [(code, labels) for code, labels in enumerate(w.slice_kinds) if per_kind[code]]
    counts: Counter[str] = Counter()
    for code, labels in present:
        for label in labels:
            counts[label] += int(per_kind[code])
    by_key: dict[str, list[str]] = {}
    for label in counts:
        by_key.setdefault(label.partition("=")[0], []).append(label)
    rename: dict[str, str] = {}
    grouped: Counter[str] = Counter()
    for key, labels in by_key.items():
        labels.sort(key=lambda label: (-counts[label], label))
        for rank, label in enumerate(labels):
            rename[label] = label if rank < max_per_key else f"{key}={OTHER}"
            grouped[rename[label]] += counts[label]
    kept = set(sorted(grouped, key=lambda label: (-grouped[label], label))[:max_slices])
    # Per distinct set of labels (not per row): a million-row window has few of them.
    codes: dict[str, list[int]] = {}
    for code, labels in present:
        for label in {rename[label] if rename[label] in kept else OTHER for label in labels}:
            codes.setdefault(label, []).append(code)
    return {label: np.isin(w.slice_codes, codes[label]) for label in sorted(codes)}


def slice_table(w: Window, slices: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Metric blocks for the whole window (`all`) and each slice of `bounded_slices`."""
    terms = RowTerms.of(w.student, w.teacher)
    table = {"all": block(w.student, w.teacher, w.labels, terms)}
    for label, m in slices.items():
        part = RowTerms(*(getattr(terms, f.name)[m] for f in fields(RowTerms)))
        table[label] = block(w.student, w.teacher, w.labels, part, rows=m)
    return table


def _z_for(tests: int) -> float:
    """Two-sided 95% z, Bonferroni-corrected for `tests` comparisons: with many slices tested
    each cycle, an uncorrected 95% test would call some healthy slice weak most cycles."""
    from scipy.stats import norm

    return float(norm.ppf(1 - 0.025 / max(1, tests)))


def _weak_test(agree: np.ndarray, m: np.ndarray, rest: np.ndarray, z: float) -> dict[str, Any] | None:
    """Rows `m` of a slice against the rows outside the slice (`rest`): the gap when the
    slice's Wilson upper bound lies below the rest's lower bound, else None."""
    n_in, n_rest = int(m.sum()), int(rest.sum())
    lo_in, hi_in = wilson(float(agree[m].sum()), n_in, z)
    lo_rest, _ = wilson(float(agree[rest].sum()), n_rest, z)
    if hi_in >= lo_rest:
        return None
    p_in, p_rest = float(agree[m].mean()), float(agree[rest].mean())
    return {
        "n": n_in,
        "agreement": p_in,
        "agreement_ci": [lo_in, hi_in],
        "rest_agreement": p_rest,
        "rest_ci_low": lo_rest,
        "gap": p_rest - p_in,
        "test": "agreement",
    }


@dataclass
class _Rest:
    """The rows outside a slice, per teacher class: their agreement rate and count."""

    rates: np.ndarray
    counts: np.ndarray
    agreement: float
    n: int


def _rest_of(
    agree: np.ndarray, target: np.ndarray, in_slice: np.ndarray, totals: tuple[np.ndarray, np.ndarray]
) -> _Rest:
    """The window's per-class totals (`totals`: counts, hits) less the slice's rows: one pass
    over the slice's rows, not the window's. A class the rest never sent gets the rest's overall
    rate (no evidence either way)."""
    idx = np.flatnonzero(in_slice)
    counts = totals[0] - np.bincount(target[idx], minlength=len(totals[0]))
    hits = totals[1] - np.bincount(target[idx], weights=agree[idx], minlength=len(totals[0]))
    n = float(counts.sum())
    p = float(hits.sum()) / n if n else 0.0
    return _Rest(np.where(counts > 0, hits / np.maximum(counts, 1), p), counts, p, int(n))


MIX_MIN_GAP = 0.03  # a large slice's mix predicts gaps of a point or less that no run can close


def _mix_test(
    agree: np.ndarray, target: np.ndarray, m: np.ndarray, rest: _Rest, z: float
) -> dict[str, Any] | None:
    """Rows `m` of a slice against the rest by their class mix: the agreement the slice would
    have if each of its rows (by the teacher's class) agreed as often as the rest's rows of
    that class. When a slice's traffic moves towards the classes the student gets wrong (a
    label-prior shift), this estimate varies only with the mix, not with each row's hit or
    miss: a 5-pt gap on 100 rows, noise to `_weak_test`, stands out here. Weak when that gap
    is significant, and both it and the slice's own gap are at least MIX_MIN_GAP (where the
    slice's rows of a class agree more often than the rest's, the mix alone says little)."""
    idx = np.flatnonzero(m)
    n_in, a, p_rest = len(idx), rest.rates, rest.agreement
    if n_in == 0 or rest.n == 0:
        return None
    mix_in = np.bincount(target[idx], minlength=len(a)) / n_in
    mix_rest = rest.counts / rest.n
    expected = float(mix_in @ a)
    gap = p_rest - expected
    # Variance: the slice's mix (multinomial, n_in rows) and the rest's per-class rates.
    var = (float(mix_in @ a**2) - expected**2) / n_in
    var += float(((mix_rest - mix_in) ** 2 * a * (1 - a) / np.maximum(rest.counts, 1)).sum())
    hits_in = float(agree[idx].sum())
    p_in = hits_in / n_in
    if min(gap, p_rest - p_in) < MIX_MIN_GAP or gap < z * math.sqrt(max(var, 1e-12)):
        return None
    lo_in, hi_in = wilson(hits_in, n_in, z)
    return {
        "n": n_in,
        "agreement": p_in,
        "agreement_ci": [lo_in, hi_in],
        "rest_agreement": p_rest,
        "rest_ci_low": wilson(p_rest * rest.n, rest.n, z)[0],
        "gap": p_rest - p_in,
        "test": "class_mix",
        "expected_agreement": expected,
        "expected_gap": gap,
    }


NEWEST_BLOCKS = 4  # min_samples x 1, 2, 4, 8: older changes show in the window or since-healthy tests


def _newest_first(w: Window, m: np.ndarray, limit: int) -> np.ndarray:
    """Row indices of a slice, newest first, at most `limit`."""
    idx = np.flatnonzero(m)
    return idx[np.argsort(-w.at[idx], kind="stable")][:limit]


def _newest_blocks(w: Window, m: np.ndarray, min_samples: int) -> list[np.ndarray]:
    """The slice's newest rows in blocks of min_samples x 1, 2, 4, 8 (each smaller than the
    slice): a change that began within a block's span shows at nearly full strength in the
    block that starts near it, however slowly the slice sends."""
    n = int(m.sum())
    idx = _newest_first(w, m, min_samples * 2 ** (NEWEST_BLOCKS - 1))
    sizes = [min_samples * 2**j for j in range(NEWEST_BLOCKS)]
    return [idx[:k] for k in sizes if k < n]


def weak_slices(
    w: Window,
    table: dict[str, dict[str, Any]],
    slices: dict[str, np.ndarray],
    min_samples: int,
    recent: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Slices whose agreement is significantly below the rest of the window, by expected gain.

    Significant: the slice's Wilson upper bound lies below the Wilson lower bound of the rows
    outside it, or its class mix predicts an agreement significantly below theirs (`_mix_test`;
    z corrected for the number of tests). Each slice is tested on its window rows,
    on its rows since the loop last saw it healthy (`recent`, per slice), and on its newest
    rows in blocks of `min_samples` x 1, 2, 4 ...: a shift that sent a few hundred bad rows
    hides among a slice's older good rows, a slow slice may be judged healthy on its window
    cycle after cycle while its newest rows go bad, and it may stop sending before the old
    rows leave the window. A weak slice's `from` estimates when its change began (`_change_start`):
    its rows since then are its changed rows, even where a cycle judged it healthy while its
    first bad rows did not yet show. Expected gain: the window agreement recovered if the slice
    rose to the rest's level, i.e. share of the window's rows x gap.
    """
    n_all = len(w)
    if n_all == 0:
        return []
    agree = (w.student.argmax(1) == w.teacher.argmax(1)).astype(np.float64)
    scopes: list[tuple[str, str, np.ndarray]] = []
    for label, stats in table.items():
        if label == "all" or label.endswith(OTHER) or stats["n"] < min_samples:
            continue
        m = slices[label]
        if n_all - int(m.sum()) < min_samples:
            continue
        scopes.append((label, "window", m))
        if recent is not None and label in recent:
            new = m & recent[label]
            if min_samples <= int(new.sum()) < int(m.sum()):
                scopes.append((label, "recent", new))
        for block in _newest_blocks(w, m, min_samples):
            newest = np.zeros(n_all, dtype=bool)
            newest[block] = True
            scopes.append((label, "newest", newest))
    z = _z_for(2 * len(scopes))  # two tests per scope: its agreement and its class mix
    target = w.teacher.argmax(1)
    classes = w.teacher.shape[1]
    totals = (np.bincount(target, minlength=classes), np.bincount(target, weights=agree, minlength=classes))
    rests: dict[str, _Rest] = {}
    found: dict[str, dict[str, Any]] = {}
    block: dict[str, dict[str, Any]] = {}
    for label, scope, m in scopes:
        result = _weak_test(agree, m, ~slices[label], z)
        if result is None:
            if label not in rests:
                rests[label] = _rest_of(agree, target, slices[label], totals)
            result = _mix_test(agree, target, m, rests[label], z)
        if result is None:
            continue
        result["expected_gain"] = result["gap"] * int(slices[label].sum()) / n_all
        entry = {"slice": label, "scope": scope, **result}
        if scope == "newest":
            evidence = result["gap"] * math.sqrt(result["n"])
            if label not in block or evidence > block[label]["gap"] * math.sqrt(block[label]["n"]):
                block[label] = entry
        elif label not in found or result["expected_gain"] > found[label]["expected_gain"]:
            found[label] = entry
    for label, entry in block.items():
        if label not in found or entry["expected_gain"] > found[label]["expected_gain"]:
            found[label] = entry
    for label, entry in found.items():
        # Found by its class mix: each row's class rate is a steadier score than its hit or miss.
        score = agree
        if entry["test"] == "class_mix":
            score = rests[label].rates[target]
        start = _change_start(w, slices[label], score, entry["rest_agreement"], min_samples)
        if start is not None:
            entry["from"] = start
    return sorted(found.values(), key=lambda r: -r["expected_gain"])


def _change_start(w: Window, m: np.ndarray, agree: np.ndarray, rest: float, min_samples: int) -> float | None:
    """When a weak slice's change began: the time of the first of its newest k rows, k (up to
    the largest newest block) maximising gap x sqrt(k), the scan statistic's estimate of a
    change point (`agree`: each row's score, its hit or its class's rate). Evidence only: the
    slice was found weak by its own test."""
    idx = _newest_first(w, m, min_samples * 2 ** (NEWEST_BLOCKS - 1))
    first = max(1, min(min_samples, len(idx)) // 2)
    if len(idx) < first:
        return None
    k = np.arange(1, len(idx) + 1)
    evidence = (rest - np.cumsum(agree[idx]) / k) * np.sqrt(k)
    best = first - 1 + int(np.argmax(evidence[first - 1 :]))
    return float(w.at[idx[best]]) if evidence[best] > 0 else None


def top_slices(table: dict[str, dict[str, Any]], k: int) -> list[str]:
    """The k largest slices: the only ones with their own gauge series (the rest are `other`)."""
    names = [s for s in table if s != "all"]
    names.sort(key=lambda s: (-table[s]["n"], s))
    return names[:k]
