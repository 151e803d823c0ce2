"""`serve` freezes what start-up built, so a full collection never walks it with the loop stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_serve_freezes_what_startup_built_out_of_the_collectors_reach(tmp_path: Path) -> None:
    """`serve` (freeze_gc) moves startup objects to the permanent generation; a full collection
    then never walks them with the event loop stopped."""
    code = f"""
import gc, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from support import write_model
from starlette.testclient import TestClient
from distill_watchdog.app import create_app
from distill_watchdog.config import load_settings
model, card = write_model(__import__("pathlib").Path({str(tmp_path)!r}))
student = {{"model": str(model), "card": str(card)}}
settings = load_settings(None, data_dir={str(tmp_path / "data")!r}, student=student)
for freeze in (False, True):
    with TestClient(create_app(settings, freeze_gc=freeze)) as client:
        assert client.get("/v2/health/ready").status_code == 200
        print(gc.get_freeze_count())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    unfrozen, frozen = map(int, out.stdout.split())
    assert unfrozen == 0 and frozen > 10_000
