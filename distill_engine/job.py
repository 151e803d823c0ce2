"""The distillation job spec (`JOB.yaml`): typed, validated, loadable from YAML/JSON or Python.

Relative paths in a job file resolve against the file's folder, so a job folder can be moved.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import JobError


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FactorySpec(_Spec):
    """A model factory `module:function` called with `num_features`, `num_classes` and kwargs."""

    factory: str = "distill_engine.zoo:mlp"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = None  # ONNX of the same architecture (e.g. the parent student): warm start

    @field_validator("factory")
    @classmethod
    def _has_colon(cls, v: str) -> str:
        if ":" not in v or v.startswith(":") or v.endswith(":"):
            raise ValueError("must look like 'module:function'")
        return v


class TeacherSpec(_Spec):
    """One teacher. `kind` picks the adapter; `slices` makes it a specialist for those slices."""

    name: str
    kind: Literal["onnx", "torch", "http-v2", "http-json"]
    path: str | None = None
    url: str | None = None
    factory: str | None = None  # torch: "module:function" when `path` is a state dict
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0)
    slices: list[str] = Field(default_factory=list)
    timeout_s: float = Field(10.0, gt=0)
    batch_size: int = Field(1024, ge=1)
    output_kind: Literal["probabilities", "logits"] = "probabilities"
    version: str | None = None  # for local teachers without an intrinsic version
    headers: dict[str, str] = Field(default_factory=dict)
    # http-v2
    model_name: str | None = None
    input_name: str = "input"
    output_name: str | None = None
    # http-json
    request_template: Any = None
    probabilities_path: str = "probabilities"
    version_path: str | None = None
    version_header: str | None = None

    location: str | None = None  # the daemon config's name: a path for local kinds, a URL for HTTP

    @model_validator(mode="after")
    def _location(self) -> TeacherSpec:
        if self.location:
            if self.kind in ("onnx", "torch"):
                self.path = self.path or self.location
            else:
                self.url = self.url or self.location
        if self.kind in ("onnx", "torch") and not self.path:
            raise ValueError(f"kind {self.kind} needs 'path'")
        if self.kind in ("http-v2", "http-json") and not self.url:
            raise ValueError(f"kind {self.kind} needs 'url'")
        if self.kind == "http-v2" and not self.model_name and not _OIP_INFER.search(urlsplit(self.url).path):
            # Every call would go to the base URL, fail, and open the circuit without saying why.
            raise ValueError(
                "kind http-v2 needs 'model_name' when the URL is a base URL "
                "(or give the whole URL, ending in /v2/models/<name>/infer)"
            )
        return self


_OIP_INFER = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer/?$")


class DataSpec(_Spec):
    """npz files: `x` float32 [N, D]; optional `y`, `slice`, `teacher_probs[__name]`, `weight`."""

    train: str
    eval: str


class HintSpec(_Spec):
    """Match a student module's output to a teacher intermediate (ONNX value name or module path)."""

    teacher: str
    student: str
    weight: float = Field(1.0, gt=0)
    teacher_name: str | None = None  # which teacher; default the first


class LossSpec(_Spec):
    temperature: float = Field(4.0, gt=0)
    kd_weight: float = Field(0.9, ge=0, le=1)
    kd_weight_end: float | None = Field(None, ge=0, le=1)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    hints: list[HintSpec] = Field(default_factory=list)
    hint_epochs: int | None = Field(None, ge=0)
    ensemble: Literal["probs", "logits"] = "probs"


class MatchProductionSpec(_Spec):
    """Importance weights so the training pool looks like a recent production window."""

    path: str
    clip: tuple[float, float] = (0.1, 10.0)

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return v


class CurationSpec(_Spec):
    min_teacher_confidence: float = Field(0.0, ge=0, le=1)
    dedupe: bool = True
    dedupe_tolerance: float = Field(1e-6, gt=0)
    exclude_teacher_versions: list[str] = Field(default_factory=list)
    exclude_slices: list[str] = Field(default_factory=list)
    slice_weights: dict[str, float] = Field(default_factory=dict)
    match_production: MatchProductionSpec | None = None

    @field_validator("match_production", mode="before")
    @classmethod
    def _path_shortcut(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v


class StageSpec(_Spec):
    """A teacher-assistant stage: this model learns from the teachers, then teaches the next."""

    student: FactorySpec
    epochs: int | None = Field(None, ge=1)


class TrainSpec(_Spec):
    """Optimisation. `epochs` is a maximum: the hold-out stops a plateaued run early."""

    epochs: int = Field(30, ge=1, description="maximum epochs; early stopping may end sooner")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    patience: int = Field(
        10, ge=0, description="epochs without a better hold-out score before stopping; 0: never"
    )
    min_epochs: int = Field(5, ge=1, description="epochs always run before early stopping may end the run")
    keep: Literal["best", "last"] = Field(
        "best",
        description="weights kept at the end: the best epoch's on the hold-out, or the last epoch's "
        "(for a hold-out that cannot judge what the job is for)",
    )
    lr_schedule: Literal["warmup_hold_decay", "constant", "cosine"] = Field(
        "warmup_hold_decay", description="warm-up, constant, cosine decay over the last `decay` share"
    )
    warmup: float = Field(0.05, ge=0, lt=0.5, description="share of the maximum steps spent warming up")
    decay: float = Field(0.3, ge=0, le=1, description="share of the maximum steps, at the end, that decay")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="learning rate at the end of the decay, x lr")


class CalibrateSpec(_Spec):
    """The hold-out: a stratified share of the curated rows, never trained on.

    It scores every epoch for early stopping and fits the temperature when `enabled`.
    """

    enabled: bool = True
    holdout: float = Field(0.1, gt=0, lt=0.5)
    min_holdout_rows: int = Field(30, ge=1, description="floor of the hold-out size (at most half the rows)")
    exclude_slices: list[str] = Field(
        default_factory=list,
        description="slices never held out: rows a warm-start parent trained on would favour its epoch",
    )


class BaselineSpec(_Spec):
    """`auto`: same architecture on the train labels if any; `none`: skip; `labels`: require labels."""

    mode: Literal["auto", "labels", "none"] = "auto"
    data: str | None = None  # npz with x, y for the baseline instead of data.train
    margin: float = Field(
        0.005, ge=0, description="the baseline is returned when the distilled student trails it by more"
    )


class StopSpec(_Spec):
    """Inputs of the ceiling rule: earlier rounds and thresholds."""

    history: list[float] = Field(default_factory=list)
    previous_model: str | None = None
    min_gain: float = 0.0
    teacher_wrong_share: float = Field(0.8, ge=0, le=1)
    capacity_agreement: float = Field(
        0.97, ge=0, le=1, description="train agreement below which a wider probe is tried; per-slice match"
    )
    n_boot: int = Field(1000, ge=100)
    rising_delta: float = Field(
        0.005, ge=0, description="hold-out gain over the last epochs that counts as still rising"
    )
    probe_epochs: int = Field(10, ge=0, description="epochs of the wider probe student; 0: no probe")
    probe_rows: int = Field(10000, ge=100, description="training rows the probe (and the fit compared) uses")
    probe_margin: float = Field(
        0.02, ge=0, description="train-agreement lead that makes the probe clearly better"
    )
    max_params_factor: float = Field(
        4.0, gt=1, description="the probe's parameters at most this x the student's"
    )
    min_slice_rows: int = Field(
        50, ge=1, description="training rows a slice needs before its ceiling can be called"
    )


class ExportSpec(_Spec):
    dynamo: bool = False
    opset: int = Field(17, ge=13)
    parity_tolerance: float = Field(1e-5, gt=0)


class SynthesisSpec(_Spec):
    """Teacher-labelled synthetic rows for (weak) slices; training rows only, never hold-out or eval."""

    enabled: bool = Field(False, description="off by default in the engine")
    slices: list[str] = Field(default_factory=list, description="slices to synthesise; empty: all")
    generators: list[Literal["jitter", "smote", "mixup", "shift"]] = Field(
        default_factory=lambda: ["jitter", "smote", "mixup", "shift"],
        description="built-in generators to use",
    )
    generator: str | None = Field(None, description="user generator 'module:function' (x, n, rng) -> [n, D]")
    min_seed_weight: float = Field(
        0.0,
        ge=0,
        description="seeds: the slice's training rows whose data `weight` is at least this; 0: all its rows",
    )
    candidates_per_row: float = Field(12.0, gt=0, description="candidates made per real row of the slice")
    max_candidates: int = Field(
        20_000, ge=1, description="candidates per slice at most (each is a teacher call)"
    )
    jitter_scale: float = Field(0.3, gt=0, description="jitter std as a share of each feature's slice std")
    neighbours: int = Field(5, ge=1, description="SMOTE: same-slice neighbours to pick from")
    mixup_alpha: float = Field(0.4, gt=0, description="mixup: Beta(alpha, alpha) mixing weight")
    min_teacher_confidence: float = Field(0.6, ge=0, le=1, description="drop less confident candidates")
    min_production_weight: float = Field(
        0.5, ge=0, description="with curation.match_production: drop candidates weighted below this"
    )
    max_ratio: float = Field(8.0, gt=0, description="kept per slice <= this x real rows")
    weight: float = Field(0.5, gt=0, le=1, description="row weight of a synthetic row (real rows: their own)")
    ablate: bool = Field(False, description="also train without synthetic rows and report both")

    @field_validator("generator")
    @classmethod
    def _generator_colon(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or v.startswith(":") or v.endswith(":")):
            raise ValueError("must look like 'module:function'")
        return v


class DistillJob(_Spec):
    name: str = "student"
    version: str | None = None
    parent_version: str | None = None
    student: FactorySpec = Field(default_factory=FactorySpec)
    teachers: list[TeacherSpec] = Field(default_factory=list)
    data: DataSpec
    loss: LossSpec = Field(default_factory=LossSpec)
    curation: CurationSpec = Field(default_factory=CurationSpec)
    stages: list[StageSpec] = Field(default_factory=list)
    train: TrainSpec = Field(default_factory=TrainSpec)
    calibrate: CalibrateSpec = Field(default_factory=CalibrateSpec)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    synthesis: SynthesisSpec = Field(default_factory=SynthesisSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    classes: list[str] | None = None
    feature_names: list[str] | None = None
    base_dir: str | None = Field(None, exclude=True)

    @field_validator("calibrate", mode="before")
    @classmethod
    def _bool_shortcut(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v

    @field_validator("baseline", mode="before")
    @classmethod
    def _mode_shortcut(cls, v: Any) -> Any:
        return {"mode": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _teachers(self) -> DistillJob:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError("teacher names must be unique")
        if self.synthesis.enabled and self.loss.hints:
            raise ValueError(
                "synthesis cannot be combined with loss.hints (synthetic rows have no teacher features)"
            )
        return self

    def resolve(self, path: str) -> Path:
        """A path from the job, made absolute against the job file's folder."""
        p = Path(path).expanduser()
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_job(data: dict[str, Any], base_dir: str | Path | None = None) -> DistillJob:
    """Validate a dict into a DistillJob; the first bad value becomes a JobError naming its field."""
    if not isinstance(data, dict):
        raise JobError("", "a job must be a mapping at the top level")
    try:
        job = DistillJob.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-after"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise JobError(_format_loc(loc), msg) from None
    if base_dir is not None:
        job.base_dir = str(base_dir)
    return job


def load_job(path: str | Path) -> DistillJob:
    """Read a JOB.yaml (or .json) file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise JobError("job", f"cannot read {p}: {e.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise JobError("job", f"{p} is not valid YAML/JSON: {first}") from None
    return parse_job(data or {}, base_dir=p.parent.resolve())
