"""Temperature scaling: one scalar T fitted by minimising NLL on held-out logits.

Dividing logits by T > 0 never changes the arg-max, so accuracy is unchanged by design.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from .metrics import softmax


def _nll(logits: np.ndarray, target: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    if target.ndim == 1:
        return float(-logp[np.arange(len(target)), target].mean())
    return float(-(target * logp).sum(axis=1).mean())


def fit_temperature(
    logits: np.ndarray, target: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """T minimising NLL. `target` is int labels [N] or soft targets [N, C] (teacher probabilities)."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(target)
    t = t.astype(np.int64) if t.ndim == 1 else t.astype(np.float64)
    if len(z) == 0:
        return 1.0
    res = minimize_scalar(
        lambda lt: _nll(z, t, float(np.exp(lt))),
        bounds=tuple(np.log(bounds)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T)."""
    return softmax(logits, temperature)
