"""Every Prometheus metric of the daemon, defined once, in one registry.

Label sets are bounded: routes are templates (never raw paths), slices are the monitor's top-K
plus `other`, versions are the registry's and teachers' (few by construction).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# Several uvicorn workers (`server.workers` > 1): `serve` points this at a folder of the daemon's
# before starting them, and every process (workers, shadow and teacher processes) counts into
# files there, summed at each scrape (prometheus_client's multiprocess mode).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))

REGISTRY = CollectorRegistry(auto_describe=True)
# Process (CPU, memory, open files), platform and GC series, as a default registry would have.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# --- per-request metrics, lock-free --------------------------------------------------------
# prometheus_client takes a lock per update and walks the buckets in Python: a few
# microseconds, paid several times by every request. The per-request series are only ever
# updated from the event loop thread, so they are plain counters read at scrape time (the
# custom-collector pattern of prometheus_client), with the same exposition.


class _LoopCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _LoopHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: the `le` bucket
        self.sum += value


_Child = TypeVar("_Child", "_LoopCounterChild", "_LoopHistogramChild")


class _LoopMetric(Generic[_Child]):
    """Label handling shared by the loop-thread metrics; `_new_child` makes one series."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()
        registry.register(self)

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def reset(self) -> None:
        self._children.clear()
        if not self.labelnames:
            self._children[()] = self._new_child()

    def labels(self, *values: str, **kw: str) -> _Child:
        key = tuple(values) if values else tuple(str(kw[n]) for n in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child


class LoopCounter(_LoopMetric[_LoopCounterChild]):
    """A counter updated only from the event loop thread (no lock); exposed like `Counter`."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _LoopCounterChild:
        return _LoopCounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].inc(amount)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            family.add_metric(list(key), child.value)
        yield family


class LoopHistogram(_LoopMetric[_LoopHistogramChild]):
    """A histogram updated only from the event loop thread (no lock); exposed like `Histogram`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _LoopHistogramChild:
        return _LoopHistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), list(child.counts), strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(key), buckets, child.sum)
        yield family


# In multiprocess mode the per-request series are prometheus_client's own (file-backed, so other
# workers' scrapes see them); in one process, the lock-free ones above.
_HotCounter: Any = Counter if MULTIPROCESS else LoopCounter
_HotHistogram: Any = Histogram if MULTIPROCESS else LoopHistogram

# --- serving -----------------------------------------------------------------------------
requests_total = _HotCounter(
    "watchdog_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["route", "code"],
    registry=REGISTRY,
)
request_duration_seconds = _HotHistogram(
    "watchdog_request_duration_seconds",
    "Time from request start to the last body byte sent.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
requests_in_flight = Gauge(
    "watchdog_requests_in_flight",
    "Requests being answered now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
batch_size = _HotHistogram(
    "watchdog_batch_size",
    "Rows per ONNX Runtime run after micro-batching.",
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
inference_seconds = _HotHistogram(
    "watchdog_inference_seconds",
    "Wall time of one ONNX Runtime run of a micro-batch.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
model_info = Gauge(
    "watchdog_model_info",
    "1 for the student version being served.",
    ["version"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
model_loads_total = Counter(
    "watchdog_model_loads",
    "Student model loads (hot swaps, start-up), by outcome: ok|failed.",
    ["outcome"],
    registry=REGISTRY,
)
model_rejections_total = Counter(
    "watchdog_model_rejections",
    "Model files refused at registration (corrupt, wrong width, unloadable).",
    registry=REGISTRY,
)
internal_errors_total = Counter(
    "watchdog_internal_errors",
    "Unexpected exceptions while answering a request (answered 500).",
    ["route"],
    registry=REGISTRY,
)
store_errors_total = Counter(
    "watchdog_store_errors",
    "Database operations that failed (and were retried or reported).",
    ["operation"],
    registry=REGISTRY,
)

# --- sampling and teachers ---------------------------------------------------------------
samples_total = Counter(
    "watchdog_samples",
    "Sampled rows by outcome: stored|dropped|quarantined|teacher_error.",
    ["outcome"],
    registry=REGISTRY,
)
sample_queue_depth = Gauge(
    "watchdog_sample_queue_depth",
    "Rows waiting for the teacher worker.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
teacher_requests_total = Counter(
    "watchdog_teacher_requests",
    "Calls to a teacher, by outcome: ok|error|timeout|circuit_open|invalid.",
    ["teacher", "outcome"],
    registry=REGISTRY,
)
teacher_latency_seconds = Histogram(
    "watchdog_teacher_latency_seconds",
    "Teacher call latency.",
    ["teacher"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
teacher_version_info = Gauge(
    "watchdog_teacher_version_info",
    "1 for each teacher version seen; pinned=true for the pinned one.",
    ["teacher", "version", "pinned"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
teacher_version_changes_total = Counter(
    "watchdog_teacher_version_changes",
    "Times a teacher answered with a version other than its pin.",
    ["teacher"],
    registry=REGISTRY,
)
feedback_labels_total = Counter(
    "watchdog_feedback_labels",
    "True labels received, by outcome: accepted|unknown_id.",
    ["outcome"],
    registry=REGISTRY,
)
teacher_circuit_open = Gauge(
    "watchdog_teacher_circuit_open",
    "1 while a teacher's circuit breaker is open (calls fail fast).",
    ["teacher"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
teacher_reevaluations_total = Counter(
    "watchdog_teacher_reevaluations",
    "Re-evaluations of a new teacher version on the frozen eval set: passed|failed|error.",
    ["teacher", "outcome"],
    registry=REGISTRY,
)
sampler_errors_total = Counter(
    "watchdog_sampler_errors",
    "Unexpected faults in the sampler or teacher worker, by stage: offer|worker|store.",
    ["stage"],
    registry=REGISTRY,
)
alerts_total = Counter(
    "watchdog_alerts",
    "Alert deliveries by receiver kind and outcome: sent|failed|suppressed.",
    ["receiver", "outcome"],
    registry=REGISTRY,
)

# --- monitor, policy, distillation -------------------------------------------------------
agreement = Gauge(
    "watchdog_agreement",
    "Student-teacher top-1 agreement on the window.",
    ["slice"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
ece = Gauge(
    "watchdog_ece",
    "Student expected calibration error, against teacher or true labels.",
    ["slice", "against"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
drift_share = Gauge(
    "watchdog_drift_share",
    "Share of drifted columns (Evidently).",
    ["scope"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
weak_slices = Gauge(
    "watchdog_weak_slices",
    "Slices significantly below the rest.",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
distill_runs_total = Counter(
    "watchdog_distill_runs",
    "Redistillation runs by outcome: promoted|pending|rejected|failed|ceiling|waiting.",
    ["outcome"],
    registry=REGISTRY,
)
promotions_total = Counter(
    "watchdog_promotions",
    "Student promotions by mode: auto|approved|manual|rollback.",
    ["mode"],
    registry=REGISTRY,
)

leader = Gauge(
    "watchdog_leader",
    "1 while this replica holds the scheduler lock (runs monitor and policy).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
monitor_cycles_total = Counter(
    "watchdog_monitor_cycles",
    "Monitor cycles by outcome: ok|skipped|failed|timeout.",
    ["outcome"],
    registry=REGISTRY,
)
monitor_cycle_seconds = Gauge(
    "watchdog_monitor_cycle_seconds",
    "Wall time of the last monitor cycle (child process).",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
kl_divergence = Gauge(
    "watchdog_kl_divergence",
    "Mean KL(teacher || student) on the window, nats.",
    ["slice"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
estimated_accuracy = Gauge(
    "watchdog_estimated_accuracy",
    "Confidence-based estimate of the student's accuracy (mean top probability).",
    ["slice"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
policy_decisions_total = Counter(
    "watchdog_policy_decisions",
    "Policy decisions by action: ok|hold|waiting|trigger|blocked.",
    ["action"],
    registry=REGISTRY,
)
scheduler_errors_total = Counter(
    "watchdog_scheduler_errors",
    "Scheduled tasks that raised, by task: monitor|retention|reeval|leader|run.",
    ["task"],
    registry=REGISTRY,
)


# --- series counted in the shadow process ------------------------------------------------
# The teacher worker runs in a process of its own (shadow/process.py). It counts into these
# metrics there and sends their samples here; /metrics adds them to this process's own.
SHADOW = (
    samples_total,
    teacher_requests_total,
    teacher_latency_seconds,
    teacher_version_info,
    teacher_version_changes_total,
    teacher_circuit_open,
    teacher_reevaluations_total,
    sampler_errors_total,
    store_errors_total,
)
_SHADOW_FAMILIES = frozenset(family.name for metric in SHADOW for family in metric.collect())
_ADDITIVE = ("counter", "histogram")  # kept when a shadow process ends; gauges end with it

SampleKey = tuple[str, str, tuple[tuple[str, str], ...]]  # (family, sample name, labels)


def _key(family: Metric, sample: Sample) -> SampleKey:
    return family.name, sample.name, tuple(sorted(sample.labels.items()))


def shadow_snapshot() -> dict[SampleKey, tuple[str, float]]:
    """This process's samples of the shadow-counted metrics: {key: (type, value)}."""
    return {
        _key(family, sample): (family.type, sample.value)
        for metric in SHADOW
        for family in metric.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


class Remote:
    """The latest samples of each running shadow process, and the counts of those that ended
    (a replaced one starts again from zero; the counters shown here must not go back)."""

    def __init__(self) -> None:
        self.live: dict[int, dict[SampleKey, tuple[str, float]]] = {}
        self.ended: dict[SampleKey, float] = {}

    def update(self, source: int, snapshot: dict[SampleKey, tuple[str, float]]) -> None:
        self.live[source] = snapshot

    def end(self, source: int) -> None:
        for key, (kind, value) in self.live.pop(source, {}).items():
            if kind in _ADDITIVE:
                self.ended[key] = self.ended.get(key, 0.0) + value

    def values(self) -> dict[SampleKey, float]:
        out = dict(self.ended)
        for snapshot in list(self.live.values()):
            for key, (_, value) in snapshot.items():
                out[key] = out.get(key, 0.0) + value
        return out


remote = Remote()


class _Merged:
    """REGISTRY with the shadow process's samples added to the same series (or as their own)."""

    def collect(self) -> Iterator[Metric]:
        extra = remote.values()
        for family in REGISTRY.collect():
            if not extra or family.name not in _SHADOW_FAMILIES:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            theirs = {k: v for k, v in extra.items() if k[0] == family.name}
            for sample in family.samples:
                value = theirs.pop(_key(family, sample), None)
                if value is None:
                    value = sample.value
                elif family.type in _ADDITIVE:
                    value += sample.value
                # a gauge: the shadow process's value, the one it sets
                merged.add_sample(sample.name, sample.labels, value, sample.timestamp, sample.exemplar)
            for (_, name, labels), value in theirs.items():  # series only the shadow process has
                merged.add_sample(name, dict(labels), value)
            yield merged


# What /metrics shows: this process's series and the shadow process's, one registry to read
# (`MERGED.get_sample_value` in tests, as with any prometheus_client registry).
MERGED = CollectorRegistry(auto_describe=False)
MERGED.register(_Merged())


def exposition() -> bytes:
    if not MULTIPROCESS:
        return generate_latest(MERGED)
    _publish()
    return generate_latest(_ACROSS)


# --- several processes (multiprocess mode) ------------------------------------------------


class _AcrossProcesses:
    """Every process's series from the shared folder; a retired gauge series (NaN) is left out."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        for family in MultiProcessCollector(None, os.environ[MULTIPROC_ENV]).collect():
            if family.type == "gauge":
                family.samples = [s for s in family.samples if not math.isnan(s.value)]
            yield family


_ACROSS = CollectorRegistry(auto_describe=False)
_ACROSS.register(_AcrossProcesses())
# Gauges read from the running parts of the daemon: gauge -> {owner: its value}.
_sources: dict[Gauge, dict[object, Callable[[], float]]] = {}


def track(gauge: Gauge, owner: object, value: Callable[[], float]) -> None:
    """`owner`'s `value()` counts into `gauge`, summed with other owners', until `untrack`: read
    at scrape time in one process; in multiprocess mode written to its file each second
    (`publish_forever`) and at each scrape, so other workers' scrapes see it."""
    _sources.setdefault(gauge, {})[owner] = value
    if MULTIPROCESS:
        gauge.set(_sum(gauge))
    else:
        gauge.set_function(lambda: _sum(gauge))


def untrack(gauge: Gauge, owner: object) -> None:
    """`owner` stopped: its value leaves the gauge."""
    _sources.get(gauge, {}).pop(owner, None)
    if MULTIPROCESS:
        gauge.set(_sum(gauge))


def _sum(gauge: Gauge) -> float:
    return float(sum(value() for value in list(_sources.get(gauge, {}).values())))


def _publish() -> None:
    for gauge in list(_sources):
        gauge.set(_sum(gauge))


async def publish_forever(interval_s: float = 1.0) -> None:
    while True:
        _publish()
        await asyncio.sleep(interval_s)


def retire(gauge: Gauge) -> None:
    """Drops a gauge's series. In multiprocess mode its file keeps them: set to NaN, which the
    exposition leaves out, so a series cleared in one process disappears for every scrape."""
    if not MULTIPROCESS:
        gauge.clear()
        return
    for labels in list(gauge._metrics):
        gauge.labels(*labels).set(math.nan)


def prepare_folder(path: Path) -> None:
    """Makes `path` the multiprocess folder of a daemon about to start its workers: emptied
    first (files of an earlier run would add their counts), then named in the environment its
    workers and their child processes inherit."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


def process_ended(pid: int | None) -> None:
    """A process counting into the folder ended: its live gauges stop counting (counters stay)."""
    if MULTIPROCESS and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, os.environ[MULTIPROC_ENV])


def set_active_model(version: str) -> None:
    """Keeps exactly one `watchdog_model_info` series: the version being served."""
    retire(model_info)
    model_info.labels(version=version).set(1)


_DEFINED = tuple(m for m in list(globals().values()) if isinstance(m, MetricWrapperBase | _LoopMetric))


def reset() -> None:
    """Every series of this process back to none, and no gauge tracked or shadow sample kept, as
    in a new process (one process only): each test starts from zero whatever ran before it."""
    for metric in _DEFINED:
        if isinstance(metric, _LoopMetric):
            metric.reset()
        elif metric._labelnames:
            metric.clear()
        else:
            metric._metric_init()  # prometheus_client's own reset of an unlabelled series
    _sources.clear()
    remote.live.clear()
    remote.ended.clear()
