"""What every CLI group shares: the config and `--json` options, JSON output and plain tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from distill_watchdog.config import CONFIG_ENV

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar=CONFIG_ENV, help="YAML config file", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def echo_json(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """The daemon's JSON with `--json`, else the human rendering of it."""
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if as_json else human(data))


def table(rows: list[dict[str, Any]], columns: list[str], empty: str = "(none)") -> str:
    """Left-aligned columns under upper-case headers; None shows as '-'."""
    if not rows:
        return empty
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
