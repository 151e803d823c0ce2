"""Readers for the deployment files: Dockerfile instructions, compose, Kubernetes manifests, PromQL."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"
DOCS = ROOT / "docs" / "deploy.md"
SCRAPE_JOB = "distill-watchdog"

# Names that PromQL expressions use besides our metrics.
PROMQL_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE"}
_METRIC_RE = re.compile(r"\b(watchdog_[a-zA-Z0-9_]+)")


def dockerfile() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    out: list[tuple[str, str, str]] = []
    stage = ""
    for line in lines:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(out)}"
        out.append((stage, instr, args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instrs = dockerfile()
    last = [s for s, i, _ in instrs if i == "FROM"][-1]
    return [(i, a) for s, i, a in instrs if s == last]


def docker_env() -> dict[str, str]:
    """ENV of the final stage (KEY=VALUE pairs; PATH expansion is not needed here)."""
    env: dict[str, str] = {}
    for instr, args in final_stage():
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def docker_json_arg(instr_name: str) -> Any:
    found = [a for i, a in final_stage() if i == instr_name]
    assert found, f"Dockerfile: no {instr_name} in the final stage"
    return json.loads(found[-1]) if found[-1].startswith("[") else found[-1]


def exposed_ports() -> set[int]:
    ports = set()
    for instr, args in final_stage():
        if instr == "EXPOSE":
            ports |= {int(p.split("/")[0]) for p in args.split()}
    return ports


def volumes() -> set[str]:
    out: set[str] = set()
    for instr, args in final_stage():
        if instr == "VOLUME":
            out |= set(json.loads(args)) if args.startswith("[") else set(args.split())
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def k8s_objects(folder: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted((folder or K8S).rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all_yaml(path):
            out.append((path, doc))
    return out


def k8s_find(kind: str, name: str | None = None, folder: Path | None = None) -> list[dict[str, Any]]:
    return [
        o
        for _, o in k8s_objects(folder)
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def metric_names(expr: str) -> set[str]:
    return set(_METRIC_RE.findall(expr))


def registry_names() -> set[str]:
    """Every series name the daemon can expose (counter `_total`, histogram `_bucket|_sum|_count`)."""
    from distill_watchdog import metrics

    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        base = family.name
        if family.type == "counter":
            names |= {base + "_total", base + "_created"}
        elif family.type == "histogram":
            names |= {base + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(base)
    return names


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULES for group in load_yaml(path)["groups"] for rule in group["rules"]]


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for annotation in dash.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            exprs.append(annotation["expr"])
    return exprs


def settings_key_exists(dotted: list[str]) -> bool:
    """Whether a path of lower-case keys (from `WATCHDOG__A__B`) names a field of the config model."""
    from pydantic import BaseModel

    from distill_watchdog.config import Settings

    model: type[BaseModel] = Settings
    for i, key in enumerate(dotted):
        fields = model.model_fields
        if key not in fields:
            return False
        annotation = fields[key].annotation
        if i == len(dotted) - 1:
            return True
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return True


def env_overrides(env: dict[str, str]) -> dict[str, Any]:
    """The config overrides that `WATCHDOG__*` variables make (for load_settings' keyword args)."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("WATCHDOG__"):
            continue
        parts = key[len("WATCHDOG__") :].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
