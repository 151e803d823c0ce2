"""bench/common.record: each run kept as data, BENCHMARKS.md showing the latest table per bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402


@pytest.fixture
def bench_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    page, results = tmp_path / "BENCHMARKS.md", tmp_path / "results"
    page.write_text("# Benchmarks\n\nIntro.\n\n## How to reproduce\n\nSteps.\n")
    monkeypatch.setattr(common, "BENCHMARKS", page)
    monkeypatch.setattr(common, "RESULTS", results)
    return page, results


def test_a_run_replaces_its_section_and_keeps_the_history_as_data(bench_files: tuple[Path, Path]) -> None:
    page, results = bench_files
    common.record("serving", "Serving", "bench/serving.py", "| a |\n|---|\n| 1 |", "first", {"rps": 1})
    common.record("loop", "Closed loop", "bench/loop.py", "| b |\n|---|\n| 2 |")
    common.record("serving", "Serving", "bench/serving.py --seconds 5", "| a |\n|---|\n| 3 |", "second")
    text = page.read_text()
    assert text.count("## Serving\n") == 1 and text.count("## Closed loop\n") == 1
    assert "| 3 |" in text and "| 1 |" not in text and "second" in text and "first" not in text
    assert text.index("## How to reproduce") < text.index("## Serving") < text.index("## Closed loop")
    runs = sorted((results / "serving").glob("*.json"))
    assert len(runs) == 2
    entries = [json.loads(p.read_text()) for p in runs]
    assert {e["command"] for e in entries} == {"bench/serving.py", "bench/serving.py --seconds 5"}
    assert entries[0]["data"] == {"rps": 1} or entries[1]["data"] == {"rps": 1}


def test_every_stored_run_names_its_date_machine_command_and_figures() -> None:
    runs = sorted((ROOT / "bench" / "results").glob("*/*.json"))
    assert runs
    for path in runs:
        entry = json.loads(path.read_text())
        assert entry["bench"] == path.parent.name, path
        for key in ("title", "date", "machine", "command", "table"):
            assert entry[key], f"{path}: no {key}"


def test_the_page_shows_one_section_per_bench_title() -> None:
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(titles) == len(set(titles))
    stored = {json.loads(p.read_text())["bench"] for p in (ROOT / "bench" / "results").glob("*/*.json")}
    for bench in stored:
        assert f"History: `bench/results/{bench}/`." in text, bench
