"""The one configuration model: a YAML file, overridden by `WATCHDOG__SECTION__KEY` variables.

Every invalid value is reported with its dotted key (`sampling.rate: must be within [0, 1]`),
so `check-config` can print one line per fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from distill_watchdog.errors import ConfigError

ENV_PREFIX = "WATCHDOG__"
CONFIG_ENV = "WATCHDOG_CONFIG"


def _within(lo: float, hi: float | None = None) -> AfterValidator:
    def check(value: float) -> float:
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be within [{lo:g}, {hi:g}]" if hi is not None else f"must be >= {lo:g}")
        return value

    return AfterValidator(check)


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


Fraction = Annotated[float, _within(0, 1)]
Positive = Annotated[float, AfterValidator(_positive)]
PositiveInt = Annotated[int, AfterValidator(_positive)]
Port = Annotated[int, _within(0, 65535)]


MIN_ADMIN_TOKEN = 16


def _admin_token(value: SecretStr | None) -> SecretStr | None:
    """An empty or short token would open model upload and activation to a guess."""
    if value is not None and len(value.get_secret_value().strip()) < MIN_ADMIN_TOKEN:
        raise ValueError(
            f"must be at least {MIN_ADMIN_TOKEN} characters (leave it unset to disable the admin API)"
        )
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="address the HTTP server binds")
    port: Port = Field(8080, description="HTTP port")
    workers: PositiveInt = Field(
        1,
        description="uvicorn worker processes; each polls the registry and samples its own requests; "
        "one scrape of /metrics counts every worker and child process (docs/serving.md)",
    )
    admin_token: Annotated[SecretStr | None, AfterValidator(_admin_token)] = Field(
        None,
        description=f"bearer token of /admin/* and the UI's forms, at least {MIN_ADMIN_TOKEN} characters; "
        "unset: the admin API is off (401)",
    )
    max_body_bytes: PositiveInt = Field(
        1_048_576, description="largest request body but uploads (public, admin, UI forms); 413 beyond"
    )
    max_upload_bytes: PositiveInt = Field(
        256 * 1_048_576, description="largest model upload (POST /admin/models); 413 beyond"
    )
    max_rows_per_request: PositiveInt = Field(1024, description="rows in one prediction request; 413 beyond")
    max_feedback_labels: PositiveInt = Field(
        10_000, description="labels in one POST /v1/feedback; 413 beyond"
    )
    drain_timeout_s: Positive = Field(
        30.0, description="on SIGTERM, in-flight requests get at most this long"
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="log lines; auto: JSON lines unless stderr is a terminal"
    )
    gil_switch_interval_ms: Positive = Field(
        0.5,
        description="longest a background thread (store, teacher hand-offs) keeps the GIL from the event "
        "loop once it asks for it back; Python's default 5 ms shows as tail latency",
    )
    background_cpus: list[int] | None = Field(
        None,
        description="CPUs for the background processes (monitor, teachers, runs), serving gets the "
        "others; negative entries count from the end (-1: the last usable CPU); unset: no pinning, "
        "background work only runs at a lower priority",
    )


class StoreConfig(Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store; unset: sqlite:///<data_dir>/watchdog.db; "
        "postgresql://... for several replicas",
    )
    poll_interval_s: Positive = Field(
        2.0, description="how often the registry and teacher pins are re-read (activations made elsewhere)"
    )


class StudentConfig(Section):
    name: str = Field("student", description="the model name served under /v2/models/{name}")
    model: Path | None = Field(
        None, description="ONNX file that seeds an empty registry at start (with card)"
    )
    card: Path | None = Field(None, description="card.json of `model` (both or neither)")
    ort_threads: PositiveInt | None = Field(
        None,
        description="ONNX Runtime threads per session; unset: up to the usable CPUs, one where the model "
        "is not faster on more",
    )
    max_batch_size: PositiveInt = Field(64, description="rows per ONNX Runtime run (micro-batching)")
    max_batch_delay_ms: Annotated[float, _within(0)] = Field(
        1.0, description="how long a batch waits for requests still being parsed; a lone request never waits"
    )
    inline_below_us: Annotated[float, _within(0)] = Field(
        200.0,
        description="a batch whose measured run time is below this runs on the event loop, saving the "
        "thread hand-off; longer runs go to a worker thread; 0: every run off the loop",
    )

    @model_validator(mode="after")
    def _model_and_card(self) -> StudentConfig:
        if (self.model is None) != (self.card is None):
            raise ValueError("model and card must be given together")
        return self


class TeacherConfig(Section):
    name: str = Field(description="unique name, used in metrics, alerts and pins")
    kind: Literal["onnx", "torch", "http-v2", "http-json"] = Field(description="adapter (docs/teachers.md)")
    location: str = Field(description="file (onnx, torch) or URL (http-v2, http-json)")
    pinned_version: str | None = Field(
        None, description="the version to expect; unset: the first version seen is pinned"
    )
    timeout_s: Positive = Field(5.0, description="one call's time limit")
    weight: Annotated[float, _within(0)] = Field(
        1.0, description="weight of this teacher's distribution when several are mixed"
    )
    slices: list[str] = Field(
        default_factory=list, description="slice labels (key=value) this teacher labels; empty: all rows"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="adapter options, e.g. model_name, input_name, output_name, output_kind "
        "(logits|probabilities), headers",
    )
    retries: Annotated[int, _within(0, 10)] = Field(
        2, description="retries of a failed call, after backoff_s (doubling)"
    )
    backoff_s: Annotated[float, _within(0)] = Field(0.2, description="wait before the first retry")
    circuit_failures: PositiveInt = Field(
        5, description="failed calls in a row that open the circuit (calls then fail fast, counted)"
    )
    circuit_reset_s: Positive = Field(30.0, description="how long an open circuit stays open")


class SamplingConfig(Section):
    rate: Fraction = Field(0.0, description="share of served rows shadowed to the teachers")
    per_slice: dict[str, Fraction] = Field(
        default_factory=dict,
        description="rate per slice label (key=value); a row takes the largest rate among its slices",
    )
    queue_size: PositiveInt = Field(
        10_000, description="sampled rows held at once (kept, sent and waiting); more are dropped, counted"
    )
    batch_size: PositiveInt = Field(256, description="rows per teacher call")
    concurrency: PositiveInt = Field(2, description="teacher batches in flight at once")
    batch_wait_s: Annotated[float, _within(0)] = Field(
        0.25, description="a batch smaller than batch_size gathers this long before its teacher call"
    )
    flush_s: Positive = Field(0.5, description="answered rows are bulk-written this often")
    on_teacher_change: Literal["quarantine", "reevaluate", "accept", "pause"] = Field(
        "quarantine",
        description="a new teacher version: quarantine waits for a person (re-evaluation shown, not acted "
        "on); reevaluate accepts it when re-evaluation passes; accept at once; pause stops sampling",
    )
    eval_set: Path | None = Field(
        None,
        description="frozen evaluation set, an npz file (x, optional y and slice); unset: the first "
        "eval_set_size teacher-labelled samples",
    )
    eval_set_size: PositiveInt = Field(200, description="rows of the evaluation set taken from samples")
    reeval_min_agreement: Fraction = Field(
        0.95,
        description="a new teacher version passes re-evaluation with at least this agreement against the "
        "pinned version's stored outputs",
    )


class MonitorConfig(Section):
    interval_s: Positive = Field(60.0, description="time between monitor cycles")
    window: PositiveInt = Field(5_000, description="a cycle reads the newest this many sampled rows")
    window_s: Positive | None = Field(
        None, description="and only rows younger than this; unset: no age limit"
    )
    reference: Path | None = Field(
        None,
        description="npz of reference features for drift before the first promotion; later the promoted "
        "run's training rows",
    )
    drift_method: str | None = Field(
        None,
        description="Evidently stat test for every column (e.g. psi, ks, wasserstein); "
        "unset: Evidently's own choice per column, by reference size and number of values",
    )
    drift_threshold: Positive | None = Field(
        None, description="drift threshold of the stat test; unset: the test's own default"
    )
    drift_sample: PositiveInt | None = Field(
        20_000,
        description="drift tests of each scope (the window, each slice) run on at most this many of its "
        "rows, a uniform random sample; unset: every row",
    )
    top_slices: PositiveInt = Field(
        20, description="slices with their own metrics and alerts per cycle (the largest; the rest: other)"
    )
    min_rows: PositiveInt = Field(
        50, description="a cycle with fewer usable rows is skipped (recorded, no policy step)"
    )
    cycle_timeout_s: Positive = Field(
        600.0, description="a cycle's child process is killed and restarted after this"
    )
    leader_poll_s: Positive = Field(
        5.0, description="how often a replica tries for (or checks) the scheduler lock"
    )
    retention_s: Positive = Field(7 * 86400.0, description="samples and cycles older than this are deleted")
    run_retention_s: Positive | None = Field(
        None,
        description="folders of runs never promoted (rejected, failed, declined) are deleted this long after "
        "their last change; unset: retention_s; promoted runs keep theirs",
    )
    retention_interval_s: Positive = Field(3600.0, description="how often the leader applies retention")
    teacher_reeval_interval_s: Positive = Field(
        600.0, description="how often a quarantined teacher version is re-evaluated"
    )


class PolicyConfig(Section):
    min_agreement: Fraction = Field(0.9, description="a cycle breaches below this agreement with the teacher")
    max_ece: Fraction = Field(
        0.1, description="a cycle breaches above this ECE against the teacher; also the candidates' ECE gate"
    )
    max_drift_share: Fraction = Field(
        0.5, description="a cycle breaches above this share of drifted features"
    )
    hysteresis: PositiveInt = Field(2, description="breaching cycles in a row before a run starts")
    cooldown_s: Annotated[float, _within(0)] = Field(3600.0, description="least time between two runs")
    max_runs_per_day: Annotated[int, _within(0)] = Field(
        4,
        description="runs the policy may start per day (those with no weak slice: at most half); "
        "0: monitor only, never a run",
    )
    min_samples: PositiveInt = Field(
        50, description="rows a slice needs (in the window, or since it was last healthy) to be found weak"
    )
    min_gain: Annotated[float, _within(0)] = Field(
        0.01,
        description="gate: each weak slice's agreement on the hold-out improves by at least this (a policy "
        "run with no weak slice: the whole hold-out's)",
    )
    max_regression: Annotated[float, _within(0)] = Field(
        0.01, description="gate: no slice drops by more than this (95% interval below zero)"
    )
    auto_promote: bool = Field(
        False, description="a candidate that passes the gates is promoted at once; else it waits for approval"
    )
    weak_slice_weight: Positive = Field(
        3.0, description="training weight of weak slices' changed rows (since their change point)"
    )
    warm_start: bool = Field(
        True, description="candidates start from the active student's weights (same architecture)"
    )
    holdout_share: Annotated[float, _within(0.05, 0.5)] = Field(
        0.2, description="share of the recent rows held out for the gates, drawn per slice and time"
    )
    max_train_rows: PositiveInt = Field(50_000, description="stored samples a run reads at most")
    min_weak_train_rows: PositiveInt = Field(
        50, description="recent rows of each weak slice a run needs to train on (else it waits for data)"
    )
    min_weak_holdout_rows: PositiveInt = Field(
        30, description="recent rows of each weak slice a run needs in its hold-out (else it waits)"
    )
    synthesis: bool = Field(
        True,
        description="teacher-labelled synthetic rows for the weak slices' training rows (the engine's "
        "synthesis stage; its options in distill.job.synthesis)",
    )
    wider_candidates: Annotated[int, _within(0, 8)] = Field(
        2,
        description="wider students (grown from the parent) trained besides the first candidate when it "
        "is capacity-limited, fails the regression gate or may close under 80% of a weak slice's gap (the "
        "lower end of its gain's 95% interval); 0: none",
    )
    max_params_factor: Annotated[float, _within(1)] = Field(
        4.0, description="a wider candidate has at most this many times the parent's parameters"
    )
    ceiling_retries: Annotated[int, _within(0)] = Field(
        2,
        description="runs allowed after a ceiling verdict once new rows of the weak slices arrived, "
        "before the ceiling blocks until the teachers or the weak slices change",
    )


class DistillConfig(Section):
    launcher: Literal["process", "torchrun", "command"] = Field(
        "process", description="how a run's training is started (docs/loop.md)"
    )
    command: str | None = Field(
        None, description="launcher command: a template with {job}, {out}, {run_id}, {python}"
    )
    nproc_per_node: PositiveInt = Field(1, description="processes of the torchrun launcher")
    timeout_s: Positive = Field(3600.0, description="a run's training is killed after this")
    job: dict[str, Any] = Field(
        default_factory=dict, description="overlays the job defaults (student factory, loss, epochs...)"
    )
    allowed_factories: list[str] = Field(
        default_factory=list,
        description="student factories a stored card may name (module:function or module:*), besides "
        "distill_engine.zoo:*; a card arrives by upload and its factory is imported and called",
    )


class AlertsConfig(Section):
    alertmanager_url: str | None = Field(None, description="Alertmanager base URL; unset: none")
    webhook_urls: list[str] = Field(default_factory=list, description="URLs that get every alert as JSON")
    timeout_s: Positive = Field(5.0, description="one delivery's time limit")
    retries: Annotated[int, _within(0, 10)] = Field(3, description="retries of a failed delivery")
    backoff_s: Annotated[float, _within(0)] = Field(0.5, description="wait before the first retry (doubling)")
    repeat_s: Positive = Field(
        60.0, description="a firing alert is re-sent this often (duplicates within it suppressed)"
    )
    min_notice_s: Annotated[float, _within(0)] = Field(
        60.0,
        description="no alert ends sooner than max(repeat_s, this) after it started, so that one resolved "
        "at once still outlives Alertmanager's group_wait and reaches a person",
    )
    queue_size: PositiveInt = Field(
        1000, description="alerts waiting for delivery; more are dropped, counted"
    )


def _slice_key(value: str) -> str:
    """A slice label is `key=value` and a row's labels are joined by `,` (gates, training data)."""
    if not value or "=" in value or "," in value:
        raise ValueError("must be non-empty, without '=' or ','")
    return value


def _slice_value(value: str) -> str:
    if "," in value:
        raise ValueError("must not contain ','")
    return value


SliceKey = Annotated[str, AfterValidator(_slice_key)]
SliceValue = Annotated[str, AfterValidator(_slice_value)]


class BinRule(Section):
    """Puts a row into a slice by the value of one feature: `name=<label of the bin>`."""

    name: SliceKey = Field(description="the slice key this rule sets")
    feature: int | str = Field(description="feature index, or a name from the card's feature_names")
    edges: list[float] = Field(description="ascending bin edges: len(edges) + 1 bins")
    labels: list[SliceValue] | None = Field(
        None, description="one label per bin; unset: <e0, e0..e1, ..., >=eN"
    )


class SlicesConfig(Section):
    keys: list[SliceKey] = Field(
        default_factory=list, description="request slice keys kept (others ignored); empty: every key"
    )
    bins: list[BinRule] = Field(default_factory=list, description="feature-binning rules")
    max_values_per_key: PositiveInt = Field(
        50,
        description="a monitor cycle keeps its own metrics for at most this many values of one key (the "
        "largest by rows; the rest form key=(other))",
    )
    max_slices: PositiveInt = Field(200, description="and for at most this many slice labels in all")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("data"), description="models, runs and the default SQLite store live here")
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP server")
    store: StoreConfig = Field(default_factory=StoreConfig, description="where versions and samples are kept")
    student: StudentConfig = Field(default_factory=StudentConfig, description="the served model")
    teachers: list[TeacherConfig] = Field(
        default_factory=list, description="the teachers rows are shadowed to"
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="shadow sampling")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="monitor cycles and retention")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="when to redistill, and the gates")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="how a run trains")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="where alerts go")
    slices: SlicesConfig = Field(default_factory=SlicesConfig, description="how rows are put into slices")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_teachers(self) -> Settings:
        names = [t.name for t in self.teachers]
        if len(names) != len(set(names)):
            raise ValueError("teacher names must be unique")
        return self

    def child_json(self) -> str:
        """These settings for a child process: the admin token left out (children never serve
        the admin API). The store URL stays: children connect to the store."""
        data = self.model_dump(mode="json")
        data["server"]["admin_token"] = None
        return json.dumps(data)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'watchdog.db'}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return lines


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Reads the YAML file (or `$WATCHDOG_CONFIG`), applies env overrides, validates."""
    path = path or os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError([f"{path}: not valid YAML{where}"]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of sections"])
        data = loaded or {}
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
