"""`distill-watchdog`: the command line. User errors print one line and exit non-zero."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from .config import CONFIG_ENV, Settings, load_settings
from .errors import ConfigError, WatchdogError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Serve a distilled student, watch it against its teacher, redistill when it slips.",
)
models_app = typer.Typer(no_args_is_help=True, help="Student versions in the registry.")
app.add_typer(models_app, name="models")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar=CONFIG_ENV, help="YAML config file", show_default=False),
]


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _registry(config: Path | None):
    from .registry import Registry
    from .store import Store

    settings = _settings(config)
    return Registry(Store(settings.store_url), settings.models_dir, ort_threads=1)


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run the daemon (HTTP, sampling, scheduler) until SIGTERM; drains in-flight requests."""
    from .server import serve as run_server

    run_server(_settings(config), str(config) if config else None)


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="YAML config file")],
    probe: Annotated[
        bool, typer.Option("--probe", help="also call each teacher once (metadata, a row of zeros)")
    ] = False,
    width: Annotated[
        int | None, typer.Option("--width", min=1, help="features per row for --probe (default: the card's)")
    ] = None,
) -> None:
    """Validate a config file; exit 2 with one line per bad key (or, with --probe, failing teacher)."""
    from .teachers.adapters import spec_for

    settings = load_settings(file)
    faults: list[str] = []
    for teacher in settings.teachers:  # adapter options are checked by the engine's own spec
        try:
            spec_for(teacher)
        except ConfigError as exc:
            faults.extend(exc.lines)
    if faults:
        raise ConfigError(faults)
    if probe:
        from .teachers.probe import probe_all

        results = probe_all(settings, width)
        for result in results:
            if result.error is None:
                typer.echo(result.line())
        failed = [r.line() for r in results if r.error is not None]
        if failed:
            raise ConfigError(failed)
    typer.echo(f"{file}: ok")


@models_app.command("register")
def models_register(
    model: Annotated[Path, typer.Argument(help="student ONNX file")],
    card: Annotated[Path, typer.Option("--card", help="card.json beside the model")],
    activate: Annotated[bool, typer.Option("--activate", help="make it the active version")] = False,
    config: ConfigOpt = None,
) -> None:
    """Add a student version; prints its version id."""
    registry = _registry(config)
    info = registry.register_files(model, card, actor="cli")
    if activate:
        registry.load(info.version)
        registry.record_activation(info.version, actor="cli", reason="registered with --activate")
    typer.echo(info.version)


@models_app.command("list")
def models_list(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List student versions (the active one is marked with *)."""
    infos = _registry(config).list()
    if as_json:
        typer.echo(orjson.dumps([i.as_dict() for i in infos], option=orjson.OPT_INDENT_2).decode())
        return
    for info in infos:
        mark = "*" if info.active else " "
        typer.echo(
            f"{mark} {info.version}  {info.name:<24} classes={info.card.num_classes} "
            f"features={info.card.num_features} T={info.card.temperature:.3f}"
        )


@models_app.command("activate")
def models_activate(version: str, config: ConfigOpt = None) -> None:
    """Make VERSION active; running daemons load it within their poll interval."""
    registry = _registry(config)
    registry.load(version)  # refuses a version that would not serve
    registry.record_activation(version, actor="cli")
    typer.echo(f"active: {version}")


@models_app.command("rollback")
def models_rollback(config: ConfigOpt = None) -> None:
    """Return to the version that was active before the current one."""
    registry = _registry(config)
    registry.load(registry.rollback_target())
    typer.echo(f"active: {registry.record_rollback(actor='cli')}")


@app.command()
def distill(
    job: Annotated[Path, typer.Option("--job", help="JOB.yaml")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    config: ConfigOpt = None,
) -> None:
    """Run one distillation job; writes student.onnx, card.json, result.json, report.html."""
    from distill_engine import run_job_file
    from distill_engine.errors import JobError

    try:
        result = run_job_file(job, out)
    except JobError as exc:
        raise WatchdogError(str(exc)) from None
    nan = float("nan")
    student, teacher = result.result.get("student", {}), result.result.get("teacher", {})
    typer.echo(
        f"wrote {result.out_dir}: student.onnx card.json result.json report.html; "
        f"accuracy {student.get('accuracy', nan):.4f} (teacher {teacher.get('accuracy', nan):.4f}), "
        f"agreement {student.get('agreement', nan):.4f}, verdict {result.verdict or 'n/a'}"
    )


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="run id (see /admin/runs or the UI)")],
    open_it: Annotated[bool, typer.Option("--open", help="open the HTML report in a browser")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print where a run's report is (HTML and JSON)."""
    from .reports.render import render_run
    from .store import Store, masked_url

    settings = _settings(config)
    store = Store(settings.store_url)
    row = store.get_run(run_id)
    if row is None:
        raise WatchdogError(f"no run {run_id!r} in {masked_url(settings.store_url)}")
    html = Path(row.run_dir) / "report.html"
    if not html.exists():
        render_run(store, run_id)
    typer.echo(f"{html}\n{html.with_suffix('.json')}\nstatus: {row.status}")
    if open_it:
        import webbrowser

        webbrowser.open(html.resolve().as_uri())


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="smaller data, fewer epochs (about 2 min)")] = False,
    out: Annotated[Path, typer.Option("--out", help="working folder (data, models, daemon state)")] = Path(
        "demo-data"
    ),
) -> None:
    """The embedded demo behind `make demo`: shift one sensor, watch the loop repair the student."""
    from .demo import run_demo

    try:
        run_demo(quick=quick, out=out)
    except RuntimeError as exc:
        raise WatchdogError(f"demo: {exc}") from None


def main() -> None:
    try:
        app(standalone_mode=False)
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(line, err=True)
        sys.exit(2)
    except WatchdogError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
