"""Headless Chromium for the UI suites: the DOM after rendering, and screenshots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def dump_dom(url: str, profile: Path) -> str:
    return _chromium(profile, "--dump-dom", url).stdout


def screenshot(url: str, profile: Path, path: Path, size: tuple[int, int] = (1280, 2400)) -> Path:
    _chromium(profile, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", url)
    assert path.exists(), f"chromium wrote no screenshot for {url}"
    return path
