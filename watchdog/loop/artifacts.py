"""Run folders on disk: the Evidently page stored compressed, and folders of runs that were never
promoted pruned after `monitor.run_retention_s`.

A run folder holds the job's data (`train.npz`, `holdout.npz`...), the engine's output, logs and
the reports. The Evidently page is mostly its embedded JavaScript, so gzip shrinks it several
times; the UI serves the `.gz` as is (`Content-Encoding: gzip`). Rejected, failed and declined
runs keep their database row (status, reason, gate numbers, audit trail) but lose their folder;
promoted runs keep theirs, since a person may need the report of the model being served.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DRIFT_PAGE = "drift.html"
NEVER_PROMOTED = ("rejected", "failed", "declined")


def drift_page(run_dir: Path) -> Path | None:
    """The run's Evidently page: compressed, or plain (runs made before compression), or None."""
    for name in (DRIFT_PAGE + ".gz", DRIFT_PAGE):
        if (run_dir / name).exists():
            return run_dir / name
    return None


def compress_drift_page(run_dir: Path) -> Path | None:
    """Replaces `drift.html` by `drift.html.gz` (atomically); the page is kept as it was on failure."""
    source = run_dir / DRIFT_PAGE
    if not source.exists():
        return None
    target = run_dir / (DRIFT_PAGE + ".gz")
    partial = run_dir / (DRIFT_PAGE + ".gz.partial")
    try:
        with open(source, "rb") as plain, gzip.open(partial, "wb", compresslevel=6) as packed:
            shutil.copyfileobj(plain, packed, 1 << 20)
        os.replace(partial, target)
        source.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        log.error("runs: cannot compress %s (%s); kept as it is", source, exc.strerror)
        return source
    return target


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prune_runs(store: Any, runs_dir: Path, cutoff: float) -> dict[str, int]:
    """Deletes the folders of rejected, failed and declined runs last changed before `cutoff`.

    Only folders inside `runs_dir` are touched (a run row's path never leads elsewhere); the run's
    row records `pruned_at`. Returns how many folders and bytes went.
    """
    root = runs_dir.resolve()
    pruned = freed = 0
    for run in store.runs_before(cutoff, NEVER_PROMOTED):
        folder = Path(run.run_dir).resolve()
        if folder.parent != root or not folder.is_dir():
            continue
        size = _size(folder)
        shutil.rmtree(folder)
        store.update_run(run.id, detail={"pruned_at": time.time()})
        pruned, freed = pruned + 1, freed + size
    return {"run_folders": pruned, "run_bytes": freed}
