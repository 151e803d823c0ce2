"""Drift of features and of predicted classes, current window vs the reference, with Evidently.

Per cycle the monitor runs Evidently's column stat tests (method and threshold from the
config) on the whole window and on each slice: cheap enough for every cycle. The full
Evidently Report (with its HTML) runs for a redistillation's report, in that run's child.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _columns(num: int, names: list[str] | None) -> list[str]:
    return list(names) if names and len(names) == num else [f"f{i}" for i in range(num)]


def column_drift(
    ref_x: np.ndarray,
    ref_pred: np.ndarray,
    cur_x: np.ndarray,
    cur_pred: np.ndarray,
    method: str | None,
    threshold: float | None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Share of drifted feature columns, and the prediction column's drift (Evidently stat tests).

    `method` None lets Evidently pick each column's test by the reference's size and the number
    of distinct values (K-S up to 1,000 reference rows, normed Wasserstein above; chi-squared or
    Jensen-Shannon for few values), each at its own default threshold unless `threshold` is set.
    A fixed PSI at 0.1 flags every column of discrete, image-like inputs given tiny noise.
    """
    import pandas as pd
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    cols = _columns(ref_x.shape[1], names)
    drifted, scores, used = [], {}, {}
    for i, name in enumerate(cols):
        ref, cur = pd.Series(ref_x[:, i]), pd.Series(cur_x[:, i])
        test = get_stattest(ref, cur, ColumnType.Numerical, method)
        res = test(ref, cur, ColumnType.Numerical, threshold)
        scores[name] = float(res.drift_score)
        used[test.name] = used.get(test.name, 0) + 1
        if res.drifted:
            drifted.append(name)
    ref_p, cur_p = pd.Series(ref_pred.astype(str)), pd.Series(cur_pred.astype(str))
    ptest = get_stattest(ref_p, cur_p, ColumnType.Categorical, method)
    pres = ptest(ref_p, cur_p, ColumnType.Categorical, threshold)
    top = sorted(scores.items(), key=lambda kv: -abs(kv[1]))[:5]
    return {
        "method": method or "auto",
        "threshold": threshold,
        "tests": used,
        "columns": len(cols),
        "drifted_columns": len(drifted),
        "share": len(drifted) / max(1, len(cols)),
        "prediction_score": float(pres.drift_score),
        "prediction_drifted": bool(pres.drifted),
        "top_columns": [{"column": k, "score": v} for k, v in top],
        "rows": int(len(cur_x)),
    }


def evidently_report(
    ref_x: np.ndarray,
    ref_pred: np.ndarray,
    cur_x: np.ndarray,
    cur_pred: np.ndarray,
    method: str | None,
    threshold: float | None,
    html_path: Path,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """The full Evidently DataDriftPreset report; writes its HTML and returns the drifted share."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = _columns(ref_x.shape[1], names)

    def frame(x: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(x, columns=cols)
        df["prediction"] = pred.astype(str)
        return df

    definition = DataDefinition(numerical_columns=cols, categorical_columns=["prediction"])
    snapshot = Report([DataDriftPreset(method=method, threshold=threshold)]).run(
        Dataset.from_pandas(frame(cur_x, cur_pred), data_definition=definition),
        Dataset.from_pandas(frame(ref_x, ref_pred), data_definition=definition),
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    summary: dict[str, Any] = {"html": html_path.name}
    for metric in snapshot.dict()["metrics"]:
        if metric["metric_name"].startswith("DriftedColumnsCount"):
            summary.update(count=float(metric["value"]["count"]), share=float(metric["value"]["share"]))
    return summary
