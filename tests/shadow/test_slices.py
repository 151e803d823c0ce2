"""Slice labels of a sampled batch: the request's own keys (filtered) plus one label per bin rule."""

from __future__ import annotations

import numpy as np

from distill_watchdog.config import BinRule, SamplingConfig, SlicesConfig
from distill_watchdog.shadow.slices import SliceRules


def test_batch_slices_label_each_row_by_its_keys_and_bins() -> None:
    rules = SliceRules(
        SlicesConfig(
            keys=["sensor"],
            bins=[
                BinRule(name="x0", feature=0, edges=[0.0, 1.0]),
                BinRule(name="t", feature="temp", edges=[20.0], labels=["cold", "warm"]),
                BinRule(name="far", feature=9, edges=[0.0]),  # beyond the rows' width: no label
            ],
        ),
        SamplingConfig(rate=0.5),
        feature_names=["x0", "temp", "z"],
    )
    x = np.array([[-1.0, 25.0, 0.0], [0.0, 19.0, 0.0], [1.5, 20.0, 0.0]], dtype=np.float32)
    given = [{"sensor": "a", "site": "n"}, None, {"site": "s"}]
    assert rules.batch_slices(x, given) == [
        {"sensor": "a", "x0": "<0", "t": "warm"},
        {"x0": "0..1", "t": "cold"},
        {"x0": ">=1", "t": "warm"},
    ]
    assert given[0] == {"sensor": "a", "site": "n"}  # the request's own object is not changed


def test_batch_slices_without_rules_keep_every_key_and_give_each_row_its_own_dict() -> None:
    rules = SliceRules(SlicesConfig(), SamplingConfig(rate=0.5))
    out = rules.batch_slices(np.zeros((3, 2), np.float32), [None, {"sensor": "b"}, None])
    assert out == [{}, {"sensor": "b"}, {}] and out[0] is not out[2]
