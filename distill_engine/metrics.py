"""Calibration and agreement metrics as pure numpy functions.

Shared with the daemon's monitor, so nothing here touches torch or files. Probabilities are
`[N, C]` arrays whose rows sum to one; labels are int arrays `[N]`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_EPS = 1e-12


def _check(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    if labels is None:
        return p, None
    y = np.asarray(labels).astype(np.int64)
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must be [N] with N={p.shape[0]}, got shape {y.shape}")
    return p, y


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of `logits / temperature` along the last axis."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose arg-max equals the label."""
    p, y = _check(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y)) if len(y) else float("nan")


def agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """Share of rows where two models pick the same top class."""
    a, _ = _check(probs_a)
    b, _ = _check(probs_b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean(a.argmax(1) == b.argmax(1))) if len(a) else float("nan")


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error, top-label, `n_bins` equal-width confidence bins."""
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    return ece_of(p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64), n_bins)


def ece_of(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """`ece` from each row's confidence and correctness (1.0 or 0.0), for callers that score
    many subsets of the same rows."""
    # Bin i holds (i/n, (i+1)/n]; confidence 0 falls in the first bin.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return float(total / len(conf))


def ece_adaptive(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Adaptive (equal-mass) ECE: bins hold equal numbers of rows sorted by confidence."""
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    return ece_adaptive_of(p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64), n_bins)


def ece_adaptive_of(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """`ece_adaptive` from each row's confidence and correctness, as `ece_of`."""
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, len(order))):
        if len(chunk):
            total += len(chunk) * abs(correct[chunk].mean() - conf[chunk].mean())
    return float(total / len(conf))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of the squared distance to the one-hot label."""
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    return float(np.mean(brier_rows(p, y)))


def brier_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's squared distance to its one-hot label (float64 `p`, int `y`)."""
    diff = p.copy()
    diff[np.arange(len(y)), y] -= 1.0  # p - onehot, without an [N, C] one-hot array
    return np.sum(diff**2, axis=1)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels (probabilities clipped at 1e-12)."""
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(log_likelihood_rows(p, y)))


def log_likelihood_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's log-probability of its label (clipped at 1e-12)."""
    return np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))


def kl_divergence(p_ref: np.ndarray, p_model: np.ndarray) -> float:
    """Mean KL(p_ref || p_model) over rows, in nats."""
    return float(np.mean(kl_rows(p_ref, p_model)))


def kl_rows(p_ref: np.ndarray, p_model: np.ndarray) -> np.ndarray:
    """Each row's KL(p_ref || p_model), in nats."""
    a, _ = _check(p_ref)
    b, _ = _check(p_model)
    a = np.clip(a, _EPS, 1.0)
    b = np.clip(b, _EPS, 1.0)
    return np.sum(a * (np.log(a) - np.log(b)), axis=1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Per-bin counts, mean confidence and accuracy, for reliability diagrams."""
    p, y = _check(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        out.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": n,
                "confidence": float(conf[m].mean()) if n else float("nan"),
                "accuracy": float(correct[m].mean()) if n else float("nan"),
            }
        )
    return out


def bootstrap_ci(
    values: np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap `(estimate, low, high)` of `stat` over rows of `values`.

    For a paired comparison pass per-row differences (e.g. correct_new - correct_old).
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = v[idx].mean(axis=1) if stat is np.mean else np.array([stat(v[i]) for i in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(stat(v)), float(lo), float(hi)


def summary(
    probs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None = None, n_bins: int = 15
) -> dict[str, float | None]:
    """The standard metric block: accuracy, agreement, ece, ece_adaptive, brier, nll.

    Calibration metrics use `labels` when given, otherwise the reference's top class (so an
    unlabelled window is scored against the teacher). `agreement` needs `reference`.
    """
    p, _ = _check(probs)
    target = labels if labels is not None else (None if reference is None else np.argmax(reference, 1))
    out: dict[str, float | None] = {
        "n": float(len(p)),
        "accuracy": accuracy(p, labels) if labels is not None else None,
        "agreement": agreement(p, reference) if reference is not None else None,
    }
    for name, fn in (("ece", ece), ("ece_adaptive", ece_adaptive)):
        out[name] = fn(p, target, n_bins) if target is not None else None
    out["brier"] = brier(p, target) if target is not None else None
    out["nll"] = nll(p, target) if target is not None else None
    return out
