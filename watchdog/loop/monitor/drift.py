"""Drift of features and of predicted classes, current window vs the reference, with Evidently.

Per cycle the monitor runs Evidently's column stat tests (method and threshold from the
config) on the whole window and on each slice: cheap enough for every cycle. The full
Evidently Report (with its HTML) runs for a redistillation's report, in that run's child.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """What a drift test compares: the reference's rows and predicted classes against the current
    ones, with the test (`method` None: Evidently's choice per column; `threshold` None: the test's
    own) and the feature names (None, or a wrong count: f0, f1, ...)."""

    ref_x: np.ndarray
    ref_pred: np.ndarray
    cur_x: np.ndarray
    cur_pred: np.ndarray
    method: str | None
    threshold: float | None
    names: list[str] | None = None

    @property
    def columns(self) -> list[str]:
        num = self.ref_x.shape[1]
        return list(self.names) if self.names and len(self.names) == num else [f"f{i}" for i in range(num)]


def column_drift(c: Comparison) -> dict[str, Any]:
    """Share of drifted feature columns, and the prediction column's drift (Evidently stat tests).

    `method` None lets Evidently pick each column's test by the reference's size and the number
    of distinct values (K-S up to 1,000 reference rows, normed Wasserstein above; chi-squared or
    Jensen-Shannon for few values), each at its own default threshold unless `threshold` is set.
    A fixed PSI at 0.1 flags every column of discrete, image-like inputs given tiny noise.
    """
    import pandas as pd
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    cols = c.columns
    drifted, scores, used = [], {}, {}
    for i, name in enumerate(cols):
        ref, cur = pd.Series(c.ref_x[:, i]), pd.Series(c.cur_x[:, i])
        test = get_stattest(ref, cur, ColumnType.Numerical, c.method)
        res = test(ref, cur, ColumnType.Numerical, c.threshold)
        scores[name] = float(res.drift_score)
        used[test.name] = used.get(test.name, 0) + 1
        if res.drifted:
            drifted.append(name)
    ref_p, cur_p = pd.Series(c.ref_pred.astype(str)), pd.Series(c.cur_pred.astype(str))
    ptest = get_stattest(ref_p, cur_p, ColumnType.Categorical, c.method)
    pres = ptest(ref_p, cur_p, ColumnType.Categorical, c.threshold)
    top = sorted(scores.items(), key=lambda kv: -abs(kv[1]))[:5]
    return {
        "method": c.method or "auto",
        "threshold": c.threshold,
        "tests": used,
        "columns": len(cols),
        "drifted_columns": len(drifted),
        "share": len(drifted) / max(1, len(cols)),
        "prediction_score": float(pres.drift_score),
        "prediction_drifted": bool(pres.drifted),
        "top_columns": [{"column": k, "score": v} for k, v in top],
        "rows": int(len(c.cur_x)),
    }


def evidently_report(c: Comparison, html_path: Path) -> dict[str, Any]:
    """The full Evidently DataDriftPreset report; writes its HTML and returns the drifted share."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = c.columns

    def frame(x: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(x, columns=cols)
        df["prediction"] = pred.astype(str)
        return df

    definition = DataDefinition(numerical_columns=cols, categorical_columns=["prediction"])
    snapshot = Report([DataDriftPreset(method=c.method, threshold=c.threshold)]).run(
        Dataset.from_pandas(frame(c.cur_x, c.cur_pred), data_definition=definition),
        Dataset.from_pandas(frame(c.ref_x, c.ref_pred), data_definition=definition),
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    summary: dict[str, Any] = {"html": html_path.name}
    for metric in snapshot.dict()["metrics"]:
        if metric["metric_name"].startswith("DriftedColumnsCount"):
            summary.update(count=float(metric["value"]["count"]), share=float(metric["value"]["share"]))
    return summary
