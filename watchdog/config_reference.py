"""docs/config.md, generated from the config model: every key, its type, default and meaning.

`python -m distill_watchdog.config_reference` rewrites the page; `--check` exits 1 when the page
differs from the model (tests/core/test_docs.py does the same), so a new key cannot go undocumented.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from distill_watchdog import config
from distill_watchdog.config import ENV_PREFIX, Settings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"

HEADER = """# Configuration reference

<!-- Generated from watchdog/config.py by `python -m distill_watchdog.config_reference`; do not edit. -->

One YAML file (`distill-watchdog serve -c FILE`, or `$WATCHDOG_CONFIG`), every key optional.
Any key can be overridden from the environment: `{prefix}SECTION__KEY`, e.g.
`{prefix}SERVER__PORT=9000` or `{prefix}STORE__URL=postgresql://...` (lists and mappings as JSON).
`distill-watchdog check-config FILE` prints one line per bad key (`sampling.rate: must be within
[0, 1]`) and exits 2; unknown keys are refused. Durations end in `_s` (seconds) or `_ms`.
"""


def _rule(metadata: list[Any]) -> str:
    """The constraint a config alias's validator enforces, as the page shows it."""
    for item in metadata:
        func = getattr(item, "func", None)
        if func is config._positive:
            return " > 0"
        if func is not None and func.__qualname__.startswith("_within."):
            bounds = inspect.getclosurevars(func).nonlocals
            lo, hi = bounds["lo"], bounds["hi"]
            return f" in [{lo:g}, {hi:g}]" if hi is not None else f" >= {lo:g}"
    return ""


def type_name(tp: Any) -> str:
    """A reader's name for an annotation: `float > 0`, `list of int`, `onnx | torch`, `null`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0]) + _rule(list(args[1:]))
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"mapping {type_name(args[0])} to {type_name(args[1])}"
    if tp is type(None):
        return "null"
    if tp is SecretStr:
        return "secret string"
    if tp is Any:
        return "any"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping (below)"
    if tp is Path:
        return "path"
    return getattr(tp, "__name__", str(tp))


def _field_type(field: FieldInfo) -> str:
    return type_name(field.annotation) + _rule(field.metadata)


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, float) and value.is_integer() and value >= 1000:
        value = int(value)
    return f"`{json.dumps(value)}`"


def _nested(field: FieldInfo) -> type[BaseModel] | None:
    """The section model a field holds (directly or as list items), else None."""
    tp = field.annotation
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if _nested(field) is not None and typing.get_origin(field.annotation) is not list:
            continue
        described = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_field_type(field)} | {_default(field)} | {described} |")
    return rows


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, str, type[BaseModel]]]:
    """(dotted name, description, model) of every section below `model`, depth first."""
    out = []
    for name, field in model.model_fields.items():
        sub = _nested(field)
        if sub is None:
            continue
        dotted = prefix + name + ("[]" if typing.get_origin(field.annotation) is list else "")
        out.append((dotted, field.description or "", sub))
        out.extend(_sections(sub, dotted + "."))
    return out


def render() -> str:
    """The whole page, from the model as it is now."""
    lines = [HEADER.format(prefix=ENV_PREFIX), "## Top level", "", *_table(Settings, ""), ""]
    for dotted, description, model in _sections(Settings, ""):
        lines += [f"## `{dotted}`", "", f"{description[:1].upper()}{description[1:]}.", ""]
        lines += [*_table(model, ""), ""]
    return "\n".join(lines)


def undocumented(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Dotted keys without a description."""
    missing = [prefix + name for name, field in model.model_fields.items() if not field.description]
    for dotted, _description, sub in _sections(model, prefix):
        missing += [f"{dotted}.{name}" for name, field in sub.model_fields.items() if not field.description]
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the page differs from the model")
    ap.add_argument("--out", type=Path, default=PAGE)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(
                f"{args.out}: out of date; run python -m distill_watchdog.config_reference", file=sys.stderr
            )
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
