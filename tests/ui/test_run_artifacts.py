"""Run folders: the Evidently page is stored gzip-compressed and served with Content-Encoding: gzip;
folders of rejected, failed and declined runs are pruned after `monitor.run_retention_s`, promoted
runs keep theirs, and every run keeps its row and page."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from alerts.trainer import ceiling_trainer
from loop.helpers import seed_samples

from distill_watchdog.alerts import Alerter
from distill_watchdog.loop.artifacts import prune_runs
from distill_watchdog.loop.scheduler import Scheduler
from distill_watchdog.store import Store
from distill_watchdog.store.tables import DistillRun

from support import ServerThread, eventually

AUTH = {"Authorization": "Bearer s3cret-token-for-tests"}


def _run(url: str, weak: list[str], final: tuple[str, ...]) -> dict:
    answer = httpx.post(f"{url}/admin/runs", json={"weak_slices": weak}, headers=AUTH, timeout=30)
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["id"]
    return eventually(
        lambda: (r := httpx.get(f"{url}/admin/runs/{run_id}", headers=AUTH).json())["status"] in final and r,
        timeout=240,
        what=f"run {run_id} to end {final}",
    )


@pytest.mark.slow  # three runs, each with a real Evidently report
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_drift_page_is_compressed_and_never_promoted_runs_are_pruned(
    make_settings, model_files, tmp_path: Path
) -> None:
    model, card = model_files()
    reference = tmp_path / "reference.npz"
    np.savez(reference, x=np.random.default_rng(0).normal(size=(400, 40)).astype(np.float32))
    settings = make_settings(
        student={"model": str(model), "card": str(card)},
        teachers=[{"name": "big", "kind": "onnx", "location": "unused.onnx"}],
        monitor={
            "interval_s": 3600,
            "leader_poll_s": 0.2,
            "reference": str(reference),
            "retention_interval_s": 1,
        },
        distill=ceiling_trainer(tmp_path, model, card),
    )
    with ServerThread(settings, components=[Alerter(settings.alerts), Scheduler()]) as srv:
        seed_samples(srv.daemon.store, srv.daemon.models.current.version, n=300)
        rejected = _run(srv.url, ["sensor=c"], ("rejected",))  # no gain on sensor c
        folder = Path(settings.data_dir) / "runs" / rejected["id"]
        assert (folder / "drift.html.gz").exists() and not (folder / "drift.html").exists()
        page = httpx.get(f"{srv.url}/ui/runs/{rejected['id']}/drift")  # httpx asks for gzip
        assert page.status_code == 200 and page.headers["content-encoding"] == "gzip"
        assert page.headers["content-type"].startswith("text/html") and "<html" in page.text.lower()
        assert (folder / "drift.html.gz").stat().st_size * 3 < len(page.content)
        plain = httpx.get(
            f"{srv.url}/ui/runs/{rejected['id']}/drift", headers={"Accept-Encoding": "identity"}
        )
        assert "content-encoding" not in plain.headers and plain.content == page.content
        assert 'id="evidently-link"' in httpx.get(f"{srv.url}/ui/runs/{rejected['id']}").text

        promoted = _run(srv.url, [], ("pending",))
        assert httpx.post(f"{srv.url}/admin/runs/{promoted['id']}/approve", headers=AUTH).status_code == 200
        declined = _run(srv.url, [], ("pending",))
        answer = httpx.post(f"{srv.url}/admin/runs/{declined['id']}/reject", json={}, headers=AUTH)
        assert answer.status_code == 200
        waiting = _run(srv.url, [], ("pending",))  # awaits a person: never pruned

        srv.daemon.settings.monitor.run_retention_s = 0.5
        runs_dir = Path(settings.data_dir) / "runs"
        eventually(
            lambda: not (runs_dir / rejected["id"]).exists() and not (runs_dir / declined["id"]).exists(),
            timeout=60,
            what="never-promoted run folders pruned",
        )
        assert (runs_dir / promoted["id"] / "report.html").exists()
        assert (runs_dir / promoted["id"] / "drift.html.gz").exists()
        assert (runs_dir / waiting["id"] / "train.npz").exists()
        for run, status in ((rejected, "rejected"), (declined, "declined")):
            shown = httpx.get(f"{srv.url}/admin/runs/{run['id']}", headers=AUTH).json()
            assert shown["status"] == status
            assert shown["detail"]["pruned_at"] > 0
            assert httpx.get(f"{srv.url}/ui/runs/{run['id']}").status_code == 200
        assert httpx.get(f"{srv.url}/ui/runs/{rejected['id']}/drift").status_code == 404


def test_pruning_touches_only_old_never_promoted_folders_under_the_runs_folder(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'watchdog.db'}")
    runs_dir = tmp_path / "runs"
    outside = tmp_path / "elsewhere"
    now = time.time()
    rows = {
        "old-rejected": ("rejected", now - 100, runs_dir / "old-rejected"),
        "old-failed": ("failed", now - 100, runs_dir / "old-failed"),
        "new-rejected": ("rejected", now, runs_dir / "new-rejected"),
        "old-promoted": ("promoted", now - 100, runs_dir / "old-promoted"),
        "old-pending": ("pending", now - 100, runs_dir / "old-pending"),
        "escapes": ("rejected", now - 100, outside),
    }
    for run_id, (status, at, folder) in rows.items():
        folder.mkdir(parents=True)
        (folder / "train.npz").write_bytes(b"x" * 1000)
        store.add_run(DistillRun(id=run_id, created_at=at, updated_at=at, status=status, run_dir=str(folder)))
    assert prune_runs(store, runs_dir, now - 50) == {"run_folders": 2, "run_bytes": 2000}
    left = {p.name for p in runs_dir.iterdir()}
    assert left == {"new-rejected", "old-promoted", "old-pending"} and outside.exists()
    assert "pruned_at" in orjson.loads(store.get_run("old-failed").detail_json)
    assert prune_runs(store, runs_dir, now - 50) == {"run_folders": 0, "run_bytes": 0}
