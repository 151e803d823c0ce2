"""Slice labels and per-row sampling rates, computed with numpy so the request path stays cheap.

A row's slices are `key=value` for each configured request key (all keys when none are
configured) plus `rule=label` for each feature-binning rule. A row's rate is the largest
`sampling.per_slice` rate among its slices, else `sampling.rate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from distill_watchdog.config import BinRule, SamplingConfig, SlicesConfig

log = logging.getLogger(__name__)


def bin_labels(rule: BinRule) -> list[str]:
    if rule.labels is not None and len(rule.labels) == len(rule.edges) + 1:
        return list(rule.labels)
    edges = [f"{e:g}" for e in rule.edges]
    return [f"<{edges[0]}", *(f"{a}..{b}" for a, b in zip(edges, edges[1:], strict=False)), f">={edges[-1]}"]


@dataclass
class _Bins:
    name: str
    column: int
    edges: np.ndarray
    labels: list[str]
    rates: np.ndarray  # per bin; -1 when the bin has no per-slice rate


class SliceRules:
    def __init__(
        self, slices: SlicesConfig, sampling: SamplingConfig, feature_names: list[str] | None = None
    ) -> None:
        self.keys = set(slices.keys)
        self.base = sampling.rate
        self.per_slice = dict(sampling.per_slice)
        self.bins: list[_Bins] = []
        for rule in slices.bins:
            column = rule.feature
            if isinstance(column, str):
                if not feature_names or column not in feature_names:
                    log.warning(
                        "slices: bin rule %s names feature %r that the card lacks; ignored", rule.name, column
                    )
                    continue
                column = feature_names.index(column)
            labels = bin_labels(rule)
            rates = np.array([self.per_slice.get(f"{rule.name}={lab}", -1.0) for lab in labels])
            self.bins.append(
                _Bins(rule.name, column, np.asarray(rule.edges, dtype=np.float64), labels, rates)
            )
        self._bin_rates = any((b.rates >= 0).any() for b in self.bins)
        # Every row's rate when nothing can change it (no per-slice rates): `rates` is not called.
        self.constant: float | None = None if self.per_slice else float(self.base)

    def request_slices(self, given: dict[str, str] | None) -> dict[str, str]:
        if not given:
            return {}
        return {k: v for k, v in given.items() if not self.keys or k in self.keys}

    def rates(self, x: np.ndarray, given: dict[str, str] | None) -> float | np.ndarray:
        """The sampling probability of each row (a scalar when every row shares it)."""
        rate = -1.0
        if given and self.per_slice:
            for key, value in self.request_slices(given).items():
                rate = max(rate, self.per_slice.get(f"{key}={value}", -1.0))
        if not self._bin_rates:
            return float(rate if rate >= 0 else self.base)
        out = np.full(len(x), rate)
        for b in self.bins:
            if b.column < x.shape[1]:
                out = np.maximum(out, b.rates[np.searchsorted(b.edges, x[:, b.column], side="right")])
        return np.where(out >= 0, out, self.base)

    def batch_slices(self, x: np.ndarray, given: list[dict[str, str] | None]) -> list[dict[str, str]]:
        """The slice labels of a batch of sampled rows, for the store and specialist teachers.

        One `searchsorted` per rule for the whole batch, not a call per row: it runs on the
        event loop.
        """
        out = [self.request_slices(g) if g else {} for g in given]
        for b in self.bins:
            if b.column < x.shape[1]:
                bins = np.searchsorted(b.edges, x[:, b.column], side="right").tolist()
                for row, i in zip(out, bins, strict=True):
                    row[b.name] = b.labels[i]
        return out
