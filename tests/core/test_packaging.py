"""The import names: ours is `distill_watchdog`; `watchdog` stays the file-system library."""

from __future__ import annotations

import subprocess
import sys


def test_distill_watchdog_and_the_watchdog_library_import_side_by_side(tmp_path):
    code = (
        "import distill_watchdog, distill_engine, watchdog, watchdog.observers, evidently;"
        "import pathlib;"
        "assert 'site-packages' in watchdog.__file__, watchdog.__file__;"
        "assert pathlib.Path(distill_watchdog.__file__).parent.name == 'watchdog';"
        "print(watchdog.observers.Observer.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"DO_NOT_TRACK": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
