"""What every CLI group shares: `--config`, `--json`, option groups, JSON output and plain tables."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import orjson
import typer

from distill_watchdog.config import CONFIG_ENV

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar=CONFIG_ENV, help="YAML config file", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def option_groups(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with each parameter whose type is a dataclass of options (fields annotated as
    typer options) standing on the command line as those options, in its place; they come to
    `command` as one instance. Options that several commands share are declared once."""
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    for param in inspect.signature(command, eval_str=True).parameters.values():
        group = param.annotation
        if not (isinstance(group, type) and dataclasses.is_dataclass(group)):
            params.append(param)
            continue
        hints = get_type_hints(group, include_extras=True)
        names = [f.name for f in dataclasses.fields(group)]
        groups[param.name] = (group, names)
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params += [
            inspect.Parameter(n, kind, default=getattr(group(), n), annotation=hints[n]) for n in names
        ]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        for name, (group, names) in groups.items():
            kwargs[name] = group(**{n: kwargs.pop(n) for n in names})
        command(**kwargs)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return run


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
