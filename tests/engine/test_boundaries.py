"""Package boundaries: the engine never imports the daemon; metrics stay torch-free for the monitor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import distill_engine

PKG = Path(distill_engine.__file__).parent


def test_engine_never_imports_the_daemon() -> None:
    for path in PKG.rglob("*.py"):
        assert "distill_watchdog" not in path.read_text(), path


def test_metrics_and_job_import_without_torch() -> None:
    code = (
        "import sys, distill_engine, distill_engine.metrics, distill_engine.job; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
