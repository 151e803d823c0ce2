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


def _job_examples() -> list[tuple[str, str]]:
    """Every YAML block in the docs that is a distillation job (it names `student` and `data`)."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```ya?ml\n(.*?)```", page.read_text(), re.S):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and {"student", "data"} <= set(data):
                found.append((page.name, block))
    return found


def test_every_job_example_in_the_docs_parses() -> None:
    from distill_engine import parse_job

    examples = _job_examples()
    assert {page for page, _ in examples} >= {"contract.md", "engine.md"}
    for page, block in examples:
        try:
            parse_job(yaml.safe_load(block))
        except Exception as exc:
            pytest.fail(f"{page}: job example does not parse: {exc}")


MAX_LINES = 600
LINK = re.compile(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>|\bhref=\"([^\"]+)\"")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_each_page_is_short(page: Path) -> None:
    lines = len(page.read_text().splitlines())
    assert lines <= MAX_LINES, f"{page.name}: {lines} lines (at most {MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_each_page_links_only_inside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text, f"{page.name} points outside the repository"
    for match in LINK.finditer(text):
        target = next(g for g in match.groups() if g)
        assert not re.match(r"[a-z]+:", target), f"{page.name}: external link {target}"
        path = target.split("#", 1)[0]
        if not path:
            continue
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"


def _defined_metrics() -> set[str]:
    source = (ROOT / "watchdog" / "metrics.py").read_text()
    return set(re.findall(r"\"(watchdog_[a-z_]+)\"", source))


def test_the_contract_lists_every_metric_the_daemon_defines() -> None:
    contract = (ROOT / "docs" / "contract.md").read_text()
    listed = set(re.findall(r"^\| `(watchdog_[a-z_]+)`", contract, re.M))
    defined = _defined_metrics()
    assert defined, "no metric names found in watchdog/metrics.py"
    missing = {n for n in defined if n not in listed and f"{n}_total" not in listed}
    assert not missing, f"not in docs/contract.md: {sorted(missing)}"
    stale = {n for n in listed if n not in defined and n.removesuffix("_total") not in defined}
    assert not stale, f"in docs/contract.md but not defined: {sorted(stale)}"


def test_the_contract_lists_every_route_the_openapi_document_has() -> None:
    import distill_watchdog.server  # noqa: F401  (every route module, as the daemon has them)
    from distill_watchdog.serving import openapi

    contract = (ROOT / "docs" / "contract.md").read_text()
    for path, operations in openapi.document(None)["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}`" in contract, f"{method.upper()} {path} not in docs/contract.md"
