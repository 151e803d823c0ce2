"""The review UI in headless Chromium: dashboard, runs, a run's report, approve with the token."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from distill_watchdog.loop.reports.render import render_run
from distill_watchdog.loop.scheduler import Scheduler
from distill_watchdog.store.tables import DistillRun

from .browser import CHROMIUM, dump_dom
from support import ServerThread


@pytest.mark.slow  # three Chromium starts
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_ui_pages_escape_and_approve(make_settings, model_files, tmp_path: Path) -> None:
    model, card = model_files()
    cand_model, cand_card = model_files(stem="candidate", seed=5)
    settings = make_settings(student={"model": str(model), "card": str(card)}, monitor={"interval_s": 3600})
    with ServerThread(settings, components=[Scheduler()]) as srv:
        daemon = srv.daemon
        parent = daemon.models.current.version
        candidate = daemon.registry.register_files(cand_model, cand_card, actor="test").version
        run_dir = Path(settings.data_dir) / "runs" / "abc123"
        evil = "<script>alert(1)</script>"
        now = time.time()
        daemon.store.add_run(
            DistillRun(
                id="abc123",
                created_at=now,
                updated_at=now,
                status="pending",
                parent_version=parent,
                candidate_version=candidate,
                run_dir=str(run_dir),
                detail_json=orjson.dumps(
                    {"reason": f"weak slices: sensor={evil}", "trigger_numbers": {"agreement": 0.7}}
                ).decode(),
            )
        )
        run_dir.mkdir(parents=True)
        np.savez(run_dir / "train.npz", x=np.zeros((5, 40), np.float32))
        report = {
            "gates": {
                "passed": True,
                "failed": [],
                "gates": [
                    {
                        "gate": "min_gain",
                        "slice": f"sensor={evil}",
                        "set": "holdout",
                        "change": 0.2,
                        "threshold": 0.01,
                        "passed": True,
                    }
                ],
            },
            "slices": {
                "holdout": {
                    f"sensor={evil}": {"n": 50, "before": 0.5, "after": 0.7, "change": 0.2, "ci": [0.1, 0.3]}
                }
            },
            "stop": {"verdict": "continue", "reasons": []},
            "reliability": {"before": [], "after": [], "against": "teacher"},
        }
        (run_dir / "report.json").write_bytes(orjson.dumps(report))
        render_run(daemon.store, "abc123")

        profile = tmp_path / "chrome"
        dom = dump_dom(f"{srv.url}/ui/", profile)
        assert parent in dom and "Recent runs" in dom and "abc123" in dom
        dom = dump_dom(f"{srv.url}/ui/runs", profile)
        assert "pending" in dom
        dom = dump_dom(f"{srv.url}/ui/runs/abc123", profile)
        assert 'id="approve"' in dom and "min_gain" in dom
        assert "<script>alert(1)</script>" not in dom and "&lt;script&gt;" in dom
        assert "<script>" not in (run_dir / "report.html").read_text()

        # Approve from the form: a wrong token is refused, the right one promotes.
        bad = httpx.post(f"{srv.url}/ui/runs/abc123/approve", data={"token": "nope"})
        assert bad.status_code == 401
        ok = httpx.post(f"{srv.url}/ui/runs/abc123/approve", data={"token": "s3cret-token-for-tests"})
        assert ok.status_code == 303
        assert daemon.models.current.version == candidate
        dom = dump_dom(f"{srv.url}/ui/runs/abc123", profile)
        assert "promoted" in dom and 'id="approve"' not in dom
        # Rollback restores the parent (one command: the admin API).
        r = httpx.post(
            f"{srv.url}/admin/models/rollback", headers={"Authorization": "Bearer s3cret-token-for-tests"}
        )
        assert r.status_code == 200 and r.json()["active"] == parent
