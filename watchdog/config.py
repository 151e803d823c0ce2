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

from .errors import ConfigError

ENV_PREFIX = "WATCHDOG__"
CONFIG_ENV = "WATCHDOG_CONFIG"


def _within(lo: float, hi: float | None = None) -> AfterValidator:
    def check(value: float) -> float:
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be within [{lo:g}, {hi:g}]" if hi is not None else f"must be >= {lo:g}")
        return value

    return AfterValidator(check)


Fraction = Annotated[float, _within(0, 1)]
Positive = Annotated[float, AfterValidator(lambda v: _positive(v))]
PositiveInt = Annotated[int, AfterValidator(lambda v: _positive(v))]
Port = Annotated[int, _within(0, 65535)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


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
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: PositiveInt = 1
    admin_token: Annotated[SecretStr | None, AfterValidator(_admin_token)] = None
    max_body_bytes: PositiveInt = 1_048_576
    max_upload_bytes: PositiveInt = 256 * 1_048_576
    max_rows_per_request: PositiveInt = 1024
    max_feedback_labels: PositiveInt = 10_000  # labels in one POST /v1/feedback; 413 beyond
    drain_timeout_s: Positive = 30.0
    log_format: Literal["auto", "json", "text"] = "auto"
    # How long a background thread (store, teacher hand-offs) may keep the GIL from the event
    # loop once it asks for it back (Python's default is 5 ms, which shows up as tail latency).
    gil_switch_interval_ms: Positive = 0.5
    # CPUs for the background processes (monitor, teachers, runs); serving gets the others.
    # Negative entries count from the end of the CPUs the process may use (-1: the last).
    # Unset: no pinning, background work only runs at a lower priority (watchdog/background.py).
    background_cpus: list[int] | None = None


class StoreConfig(Section):
    url: str | None = None
    poll_interval_s: Positive = 2.0


class StudentConfig(Section):
    name: str = "student"
    model: Path | None = None
    card: Path | None = None
    ort_threads: PositiveInt | None = None
    max_batch_size: PositiveInt = 64
    max_batch_delay_ms: Annotated[float, _within(0)] = 1.0
    # A batch whose measured run time is below this runs on the event loop thread, saving the
    # thread hand-off; longer runs go to a worker thread. 0 keeps every run off the loop.
    inline_below_us: Annotated[float, _within(0)] = 200.0

    @model_validator(mode="after")
    def _model_and_card(self) -> StudentConfig:
        if (self.model is None) != (self.card is None):
            raise ValueError("model and card must be given together")
        return self


class TeacherConfig(Section):
    name: str
    kind: Literal["onnx", "torch", "http-v2", "http-json"]
    location: str
    pinned_version: str | None = None
    timeout_s: Positive = 5.0
    weight: Annotated[float, _within(0)] = 1.0
    slices: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    # A failed call is retried `retries` times (backoff_s, doubling); after `circuit_failures`
    # failed calls in a row the circuit opens for `circuit_reset_s` (calls fail fast, counted).
    retries: Annotated[int, _within(0, 10)] = 2
    backoff_s: Annotated[float, _within(0)] = 0.2
    circuit_failures: PositiveInt = 5
    circuit_reset_s: Positive = 30.0


class SamplingConfig(Section):
    rate: Fraction = 0.0
    per_slice: dict[str, Fraction] = Field(default_factory=dict)
    queue_size: PositiveInt = 10_000
    batch_size: PositiveInt = 256  # rows per teacher call
    concurrency: PositiveInt = 2  # teacher batches in flight at once
    # A batch smaller than batch_size gathers this long before its teacher call.
    batch_wait_s: Annotated[float, _within(0)] = 0.25
    flush_s: Positive = 0.5  # answered rows are bulk-written this often
    # quarantine: a new teacher version waits for a person (re-evaluation is shown, not acted on);
    # reevaluate: a passing re-evaluation accepts it; accept: at once; pause: sampling stops.
    on_teacher_change: Literal["quarantine", "reevaluate", "accept", "pause"] = "quarantine"
    # Frozen evaluation set: an npz file (x, optional y and slice), else the first
    # `eval_set_size` teacher-labelled samples. A new teacher version passes re-evaluation
    # with agreement >= reeval_min_agreement against the pinned version's stored outputs.
    eval_set: Path | None = None
    eval_set_size: PositiveInt = 200
    reeval_min_agreement: Fraction = 0.95


class MonitorConfig(Section):
    interval_s: Positive = 60.0
    window: PositiveInt = 5_000
    window_s: Positive | None = None
    reference: Path | None = None
    drift_method: str = "psi"
    drift_threshold: Positive = 0.1
    # Drift tests run on at most this many rows per scope (the window, each slice): a uniform
    # random sample; None: every row. The stat tests' time grows with their rows.
    drift_sample: PositiveInt | None = 20_000
    top_slices: PositiveInt = 20
    min_rows: PositiveInt = 50  # a cycle with fewer usable rows is skipped (recorded, no policy step)
    cycle_timeout_s: Positive = 600.0
    leader_poll_s: Positive = 5.0  # how often a replica tries for (or checks) the scheduler lock
    retention_s: Positive = 7 * 86400.0  # samples and cycles older than this are deleted
    # Folders of runs never promoted (rejected, failed, declined) are deleted this long after their
    # last change; None: `retention_s`. Promoted runs keep theirs.
    run_retention_s: Positive | None = None
    retention_interval_s: Positive = 3600.0
    teacher_reeval_interval_s: Positive = 600.0


class PolicyConfig(Section):
    min_agreement: Fraction = 0.9
    max_ece: Fraction = 0.1
    max_drift_share: Fraction = 0.5
    hysteresis: PositiveInt = 2
    cooldown_s: Annotated[float, _within(0)] = 3600.0
    max_runs_per_day: Annotated[int, _within(0)] = 4  # 0: monitor only, the policy never starts a run
    min_samples: PositiveInt = 200
    min_gain: Annotated[float, _within(0)] = 0.01
    max_regression: Annotated[float, _within(0)] = 0.01
    auto_promote: bool = False
    weak_slice_weight: Positive = 3.0  # training weight of weak slices' rows since they were last healthy
    warm_start: bool = True  # candidates start from the active student's weights (same architecture)
    holdout_share: Annotated[float, _within(0.05, 0.5)] = 0.2  # newest samples kept out of training for gates
    max_train_rows: PositiveInt = 50_000


class DistillConfig(Section):
    launcher: Literal["process", "torchrun", "command"] = "process"
    command: str | None = None
    nproc_per_node: PositiveInt = 1
    timeout_s: Positive = 3600.0
    job: dict[str, Any] = Field(default_factory=dict)
    # Student factories a stored card may name (`module:function`, or `module:*`), besides
    # `distill_engine.zoo:*`: a card arrives by upload, and its factory is imported and called.
    allowed_factories: list[str] = Field(default_factory=list)


class AlertsConfig(Section):
    alertmanager_url: str | None = None
    webhook_urls: list[str] = Field(default_factory=list)
    timeout_s: Positive = 5.0
    retries: Annotated[int, _within(0, 10)] = 3
    backoff_s: Annotated[float, _within(0)] = 0.5
    repeat_s: Positive = 60.0  # a firing alert is re-sent this often (and duplicates within it suppressed)
    # No alert ends sooner than max(repeat_s, min_notice_s) after it started, so that one that
    # is resolved at once (a teacher change accepted automatically) still outlives
    # Alertmanager's group_wait (30 s by default) and reaches a person.
    min_notice_s: Annotated[float, _within(0)] = 60.0
    queue_size: PositiveInt = 1000


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

    name: SliceKey
    feature: int | str
    edges: list[float]
    labels: list[SliceValue] | None = None


class SlicesConfig(Section):
    keys: list[SliceKey] = Field(default_factory=list)
    bins: list[BinRule] = Field(default_factory=list)
    # A monitor cycle keeps its own metrics for at most this many values of one key (the
    # largest by rows; the rest of the key's rows form `key=(other)`) and this many labels in all.
    max_values_per_key: PositiveInt = 50
    max_slices: PositiveInt = 200


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("data")
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = Field(default_factory=list)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    slices: SlicesConfig = Field(default_factory=SlicesConfig)

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
