"""The dashboard in headless Chromium after real monitor cycles on sampled traffic without feedback
labels (the normal case), and a teacher change accepted from its form."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from distill_watchdog.server import default_components

from .test_review_ui import CHROMIUM, dump_dom
from shadow.helpers import daemon_settings, eventually, teacher_config
from support import ServerThread, get_pin
from teachers.fake_teacher import FakeTeacher


@pytest.mark.slow  # cycles, a teacher and two Chromium starts
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_dashboard_after_cycles_without_labels_and_a_teacher_change(
    make_settings, model_files, tmp_path
) -> None:
    with FakeTeacher(version="v1") as teacher:
        settings = daemon_settings(
            make_settings,
            model_files,
            [teacher_config(teacher.url)],
            sampling={"eval_set_size": 20},
            monitor={"interval_s": 1, "min_rows": 20, "leader_poll_s": 0.2},
        )
        with ServerThread(settings, default_components(settings)) as srv:
            rng = np.random.default_rng(0)
            for i in range(6):
                body = {
                    "inputs": rng.normal(size=(10, 40)).round(3).tolist(),
                    "slice": {"sensor": "ab"[i % 2]},
                }
                assert httpx.post(srv.url + "/v1/predict", json=body).status_code == 200
            eventually(
                lambda: (srv.daemon.scheduler.last_cycle or {}).get("outcome") == "ok",
                timeout=60,
                what="a monitor cycle over the sampled rows",
            )
            assert srv.daemon.store.recent_cycles(1)[0].outcome == "ok"
            assert httpx.get(srv.url + "/ui/").status_code == 200
            dom = dump_dom(f"{srv.url}/ui/", tmp_path / "chrome")
            assert 'id="slices"' in dom and "sensor=a" in dom and "sensor=b" in dom

            # A new teacher version: quarantined, shown with its re-evaluation and a form to accept it.
            eventually(lambda: srv.daemon.store.eval_count("big") == 20, what="eval set frozen")
            teacher.version = "v2"
            assert httpx.post(srv.url + "/v1/predict", json={"inputs": [[0.1] * 40]}).status_code == 200
            eventually(
                lambda: "passed: agreement 1.000 on 20 rows" in httpx.get(srv.url + "/ui/").text,
                what="the re-evaluation on the dashboard",
            )
            dom = dump_dom(f"{srv.url}/ui/", tmp_path / "chrome")
            assert 'id="accept-big"' in dom and "WatchdogTeacherVersionChanged" in dom
            form = {"token": "s3cret-token-for-tests", "reason": "checked the vendor's notes"}
            r = httpx.post(srv.url + "/ui/teachers/big/accept", data=form, headers={"Origin": srv.url})
            assert r.status_code == 303 and r.headers["location"] == "/ui/"
            assert get_pin(srv.daemon.store, "big").pinned_version == "v2"
            audit = next(a for a in srv.daemon.store.audit_events() if a.action == "teacher.accepted")
            assert audit.actor == "ui" and "vendor" in audit.detail_json
            eventually(lambda: 'id="accept-big"' not in httpx.get(srv.url + "/ui/").text, what="form gone")
