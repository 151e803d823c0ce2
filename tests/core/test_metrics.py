"""The lock-free per-request metrics expose exactly what prometheus_client's own types would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from distill_watchdog.metrics import LoopCounter, LoopHistogram


def _lines(registry: CollectorRegistry) -> set[str]:
    return {
        line
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#") and "_created" not in line
    }


def test_loop_metrics_match_prometheus_client_exposition():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    counter = LoopCounter("demo_requests_total", "Requests.", ["route", "code"], registry=ours)
    reference_counter = Counter("demo_requests", "Requests.", ["route", "code"], registry=theirs)
    histogram = LoopHistogram("demo_seconds", "Time.", ["route"], buckets=buckets, registry=ours)
    reference_histogram = Histogram("demo_seconds", "Time.", ["route"], buckets=buckets, registry=theirs)
    plain = LoopHistogram("demo_rows", "Rows.", buckets=(1, 2, 4), registry=ours)
    reference_plain = Histogram("demo_rows", "Rows.", buckets=(1, 2, 4), registry=theirs)
    # Boundaries belong to their own bucket (`le`), values above the last go to +Inf only.
    for value in (0.0005, 0.001, 0.0011, 0.01, 0.5, 1.0, 7.0):
        histogram.labels(route="/a").observe(value)
        reference_histogram.labels(route="/a").observe(value)
    for value in (1, 2, 3, 4, 9):
        plain.observe(value)
        reference_plain.observe(value)
    for route, code in (("/a", "200"), ("/a", "200"), ("/b", "422")):
        counter.labels(route=route, code=code).inc()
        reference_counter.labels(route=route, code=code).inc()
    assert _lines(ours) == _lines(theirs)
