"""The demo, compressed, end to end: a real daemon process, real HTTP traffic, a real child-process
redistillation; the shifted sensor recovers and the candidate is promoted."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_watchdog.demo import Scenario, run_scenario

from support import free_port

TINY = Scenario(
    teacher_rows=2000,
    traffic_rows=2400,
    shifted_rows=900,
    test_rows=300,
    teacher_epochs=20,
    student_epochs=15,
    distill_epochs=12,
    interval_s=2.0,
    window=600,
    timeout_s=600.0,
)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # generates data and trains a teacher and a student before the loop starts
def test_shifted_sensor_is_detected_redistilled_gated_and_promoted(tmp_path: Path) -> None:
    res = run_scenario(tmp_path, TINY, free_port(), log=lambda *a: None)
    run = res["run"]
    assert run["status"] == "promoted" and run["gates_passed"] is True
    assert res["v2"] == run["candidate_version"] != res["v1"]
    before = res["before"]
    assert before["c"] - before["c-shifted"] > 0.1, res  # the shift hurt the old student
    # The promoted student wins back most of the loss. This compressed run recovers about all
    # of it; half leaves room for a noisy 300-row measurement (the 80% target is the
    # benchmark's, on the full scenario: docs/BENCHMARKS.md).
    assert res["recovered"] >= 0.5, res
    for sensor, change in res["others_change"].items():
        assert change > -0.03, (sensor, res)  # gates: no other sensor got clearly worse
    report = Path(res["report_file"])
    assert report.exists() and "sensor=c" in report.read_text()
    assert (report.parent / "drift.html.gz").exists()  # the Evidently page, stored compressed
