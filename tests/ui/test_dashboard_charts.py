"""The dashboard's curves in headless Chromium, from a real daemon's cycles: sampled traffic with a
weak slice, monitor cycles, a promoted and a rejected run; the charts carry points, thresholds,
run markers and student versions, and the screenshot shows them."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from alerts.traffic import SliceTraffic
from alerts.trainer import ceiling_trainer
from PIL import Image

from distill_watchdog.server import default_components
from distill_watchdog.ui.charts import lttb

from .browser import CHROMIUM, dump_dom, screenshot
from shadow.helpers import daemon_settings, eventually, teacher_config
from support import ServerThread
from teachers.fake_teacher import FakeTeacher

AUTH = {"Authorization": "Bearer s3cret-token-for-tests"}


def _ok_cycles(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('watchdog_monitor_cycles_total{outcome="ok"}'):
            return float(line.split()[1])
    return 0.0


def _run(url: str, weak: list[str]) -> dict:
    answer = httpx.post(f"{url}/admin/runs", json={"weak_slices": weak}, headers=AUTH, timeout=30)
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["id"]
    done = ("promoted", "rejected", "failed")  # auto_promote: `pending` lasts until the promotion
    return eventually(
        lambda: (r := httpx.get(f"{url}/admin/runs/{run_id}", headers=AUTH).json())["status"] in done and r,
        timeout=180,
        what=f"run {run_id} done",
    )


def _charts(dom: str) -> dict[tuple[str, str], str]:
    """(metric, slice) -> the chart's SVG markup."""
    found = re.findall(r'(<svg[^>]*class="chart"[^>]*>.*?</svg>)', dom, re.S)
    out = {}
    for svg in found:
        metric = re.search(r'data-metric="([^"]+)"', svg).group(1)
        label = re.search(r'data-slice="([^"]+)"', svg).group(1)
        out[(metric, label)] = svg
    return out


def _points(svg: str) -> int:
    return sum(len(p.split()) for p in re.findall(r'<polyline[^>]*points="([^"]+)"', svg))


@pytest.mark.slow  # a real daemon, cycles, two runs and three Chromium starts
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_dashboard_draws_the_curves_of_real_cycles(make_settings, model_files, tmp_path: Path) -> None:
    model, card = model_files()
    traffic = SliceTraffic()
    with FakeTeacher(version="v1") as teacher:
        settings = daemon_settings(
            make_settings,
            model_files,
            [teacher_config(teacher.url)],
            monitor={"interval_s": 1.0, "window": 300, "min_rows": 50, "leader_poll_s": 0.2},
            policy={"min_samples": 40, "max_runs_per_day": 0, "auto_promote": True},
            slices={"keys": ["sensor"]},
            distill=ceiling_trainer(tmp_path, model, card),
        )
        with ServerThread(settings, default_components(settings)) as srv:
            for sensor, agree in (("a", True), ("b", True), ("c", False)):
                traffic.send(srv.url, sensor, 100, agree)
            eventually(lambda: _ok_cycles(srv.url) >= 3, timeout=120, what="three monitor cycles")
            run = _run(srv.url, [])
            assert run["status"] == "promoted", run  # a new student version
            for sensor, agree in (("a", True), ("b", True), ("c", False)):
                traffic.send(srv.url, sensor, 100, agree)
            done = _ok_cycles(srv.url)
            eventually(lambda: _ok_cycles(srv.url) >= done + 3, timeout=120, what="cycles of the new version")
            run = _run(srv.url, ["sensor=c"])
            assert run["status"] == "rejected", run  # no gain on sensor c

            profile = tmp_path / "chrome"
            dom = dump_dom(f"{srv.url}/ui/?range=6h", profile)
            shot = screenshot(f"{srv.url}/ui/?range=24h#curves", profile, tmp_path / "dashboard.png")
            assert httpx.get(f"{srv.url}/ui/?range=1y").json() == {
                "error": "range: must be one of 6h, 24h, 7d"
            }

    charts = _charts(dom)
    assert {m for m, _ in charts} == {"agreement", "ece", "drift"}
    assert {"all", "sensor=c"} <= {s for _, s in charts}
    agreement_all, agreement_c = charts[("agreement", "all")], charts[("agreement", "sensor=c")]
    assert _points(agreement_all) >= 6 and _points(agreement_c) >= 6
    assert 'class="threshold"' in agreement_c
    for kind in ("started", "promoted", "rejected"):
        assert f'class="marker marker-{kind}"' in agreement_all, kind
    assert agreement_all.count('class="version"') == 2  # the first student, then the promoted one
    assert "<strong>weak</strong>" in dom.split('data-slice="sensor=c"')[0].rsplit("<tr>", 1)[1]
    assert "<strong>6h</strong>" in dom and 'href="/ui/?range=7d#curves"' in dom

    # The screenshot is not blank: the agreement curves' blue is drawn, and the threshold's red.
    image = Image.open(shot).convert("RGB")
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    near = lambda rgb: int((np.abs(pixels - rgb).sum(1) < 60).sum())  # noqa: E731
    assert near((31, 111, 235)) > 200 and near((207, 34, 46)) > 200
    assert len(np.unique(pixels, axis=0)) > 20


def test_downsampling_keeps_the_dip() -> None:
    t = np.arange(5000, dtype=np.float64)
    v = np.full(5000, 0.95)
    v[3131] = 0.4  # one bad cycle among thousands
    st, sv = lttb(t, v, 200)
    assert len(st) == 200 and st[0] == 0 and st[-1] == 4999
    assert sv.min() == 0.4
