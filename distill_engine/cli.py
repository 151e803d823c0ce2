"""Command line: run one job; user errors exit 2 with one line, cancellation exits 130."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import Cancelled, DistillError, JobError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the job, print a one-line JSON summary on stdout (rank 0 only)."""
    ap = argparse.ArgumentParser(prog="python -m distill_engine", description="Run one distillation job.")
    ap.add_argument("--job", required=True, help="JOB.yaml or .json")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--progress", choices=["auto", "json", "tqdm", "none"], default="auto")
    args = ap.parse_args(argv)
    from .job import load_job

    try:
        job = load_job(args.job)  # validate before importing torch: bad jobs fail fast
        from .runner import run

        res = run(job, args.out, progress=None if args.progress == "auto" else args.progress)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Cancelled:
        print("error: cancelled", file=sys.stderr)
        return 130
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if res.is_main:
        r = res.result
        print(
            json.dumps(
                {
                    "out": str(res.out_dir),
                    "version": r["version"],
                    "verdict": r["stop"]["verdict"],
                    "selected": r["selected"]["model"],
                    "note": r["selected"]["reason"],
                    "student": {k: r["student"].get(k) for k in ("accuracy", "agreement", "ece")},
                    "wall_seconds": r["wall_seconds"],
                }
            )
        )
    return 0
