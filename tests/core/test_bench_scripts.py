"""Every benchmark script still imports against the package (a rename breaks it here, not in a bench run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Run by other benches as a child process with positional arguments: nothing to check on its own.
CHILD_SCRIPTS = {"serving_peers.py"}

IMPORT_ALL = """
import importlib.util, sys
failed = []
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("bench_" + path.rsplit("/", 1)[-1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        failed.append(f"{path}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_bench_script_imports() -> None:
    scripts = sorted(str(p) for p in BENCH.glob("*.py") if p.name not in CHILD_SCRIPTS)
    assert len(scripts) > 10
    tests_dir = str(Path(__file__).resolve().parents[1])
    env_path = f"{BENCH}:{tests_dir}"
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *scripts],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "DO_NOT_TRACK": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
