"""The user docs: the config reference matches the config model, and every config example loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from distill_watchdog import config_reference
from distill_watchdog.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def test_the_config_reference_is_generated_from_the_model() -> None:
    page = ROOT / "docs" / "config.md"
    assert page.read_text() == config_reference.render(), (
        "docs/config.md is out of date: run .venv/bin/python -m distill_watchdog.config_reference"
    )


def test_every_config_key_has_a_description() -> None:
    assert config_reference.undocumented() == []


def test_the_reference_lists_every_key_with_its_default() -> None:
    text = config_reference.render()
    for section in ("server", "store", "student", "sampling", "monitor", "policy", "distill", "alerts"):
        model = type(getattr(Settings(), section))
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{section}.{name} missing"
    assert "| `port` | int in [0, 65535] | `8080` |" in text
    assert "| `rate` | float in [0, 1] | `0.0` |" in text
    assert "| `name` | str | required |" in text  # teachers[].name


def test_check_mode_fails_on_a_stale_page(tmp_path: Path) -> None:
    stale = tmp_path / "config.md"
    stale.write_text("# old\n")
    assert config_reference.main(["--check", "--out", str(stale)]) == 1
    assert config_reference.main(["--out", str(stale)]) == 0
    assert config_reference.main(["--check", "--out", str(stale)]) == 0


def _config_examples() -> list[tuple[str, str]]:
    """Every YAML block in the docs whose top-level keys are config sections."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```ya?ml\n(.*?)```", page.read_text(), re.S):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and set(data) <= set(Settings.model_fields):
                found.append((page.name, block))
    return found


@pytest.mark.parametrize(("page", "block"), _config_examples(), ids=lambda v: v if v.endswith(".md") else "")
def test_every_config_example_in_the_docs_loads(page: str, block: str) -> None:
    Settings(**yaml.safe_load(block))  # a ValidationError names the bad key


def test_the_docs_hold_config_examples() -> None:
    assert {page for page, _ in _config_examples()} >= {"serving.md", "sampling.md", "alerts.md"}
