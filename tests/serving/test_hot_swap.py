"""Hot swap under concurrent load, failed loads, and replicas following the store."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np

from distill_watchdog.registry import Registry
from distill_watchdog.store import Store

from support import ServerThread, eventually, mlp_onnx_bytes

TOKEN = {"Authorization": "Bearer s3cret-token-for-tests"}
X = np.random.default_rng(3).normal(size=(2, 40)).astype(np.float32).tolist()


async def _load(
    url: str, stop: threading.Event, results: list[tuple[int, str | None]], workers: int = 16
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            while not stop.is_set():
                r = await client.post("/v1/predict", json={"inputs": X})
                results.append((r.status_code, r.json().get("model_version")))

        await asyncio.gather(*(worker() for _ in range(workers)))


def test_swap_under_load_drops_nothing(make_settings, model_files, tmp_path):
    model, card = model_files()
    settings = make_settings(student={"model": str(model), "card": str(card), "max_batch_size": 8})
    with ServerThread(settings) as srv:
        old = srv.daemon.models.current.version
        registry = srv.daemon.registry
        candidates = [
            registry.register(mlp_onnx_bytes(seed=s), _card(), actor="test").version for s in (11, 12)
        ]
        stop, results = threading.Event(), []
        loader = threading.Thread(target=lambda: asyncio.run(_load(srv.url, stop, results)))
        loader.start()
        try:
            eventually(lambda: len(results) > 50)
            for version in [*candidates, old, candidates[0]]:
                r = httpx.post(f"{srv.url}/admin/models/{version}/activate", headers=TOKEN, timeout=30)
                assert r.status_code == 200, r.text
                seen = len(results)
                eventually(lambda seen=seen: len(results) > seen + 30)
        finally:
            stop.set()
            loader.join()
    assert results and all(code == 200 for code, _ in results)
    assert {v for _, v in results} <= {old, *candidates}
    assert {v for _, v in results} == {old, *candidates}


def test_failed_load_changes_nothing(make_settings, model_files):
    model, card = model_files()
    with ServerThread(make_settings(student={"model": str(model), "card": str(card)})) as srv:
        registry = srv.daemon.registry
        before = srv.daemon.models.current.version
        info = registry.register(mlp_onnx_bytes(seed=21), _card(), actor="test")
        # The stored file goes bad on disk after registration.
        (registry.models_dir / f"{info.sha256}.onnx").write_bytes(b"garbage")
        r = httpx.post(f"{srv.url}/admin/models/{info.version}/activate", headers=TOKEN)
        assert r.status_code == 422 and "corrupted" in r.json()["error"]
        assert registry.active_version() == before
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": X})
        assert r.status_code == 200 and r.json()["model_version"] == before
        assert 'watchdog_model_loads_total{outcome="failed"}' in httpx.get(srv.url + "/metrics").text


def test_replica_follows_activation_made_elsewhere(make_settings, model_files):
    """Two servers on one store: an activation through one is served by the other after a poll."""
    model, card = model_files()
    settings_a = make_settings(student={"model": str(model), "card": str(card)})
    settings_b = make_settings(data_dir=str(settings_a.data_dir))
    with ServerThread(settings_a) as a, ServerThread(settings_b) as b:
        assert (
            httpx.post(b.url + "/v1/predict", json={"inputs": X}).json()["model_version"]
            == a.daemon.models.current.version
        )
        new = a.daemon.registry.register(mlp_onnx_bytes(seed=31), _card(), actor="test").version
        assert httpx.post(f"{a.url}/admin/models/{new}/activate", headers=TOKEN).status_code == 200
        eventually(
            lambda: httpx.post(b.url + "/v1/predict", json={"inputs": X}).json()["model_version"] == new
        )


def test_replica_keeps_serving_when_the_new_active_file_is_bad(make_settings, model_files, tmp_path):
    """A version activated elsewhere that this replica cannot load: it keeps the old one."""
    model, card = model_files()
    settings = make_settings(student={"model": str(model), "card": str(card)})
    with ServerThread(settings) as srv:
        before = srv.daemon.models.current.version
        registry = Registry(Store(settings.store_url), settings.models_dir)
        info = registry.register(mlp_onnx_bytes(seed=41), _card(), actor="test")
        (settings.models_dir / f"{info.sha256}.onnx").write_bytes(b"\0" * 10)
        registry.record_activation(info.version, actor="elsewhere")
        eventually(lambda: srv.daemon.models._failed_version == info.version)
        assert httpx.post(srv.url + "/v1/predict", json={"inputs": X}).json()["model_version"] == before


def _card() -> dict:
    return {
        "name": "swap",
        "input_name": "x",
        "output_name": "logits",
        "num_features": 40,
        "classes": list(range(10)),
    }


def test_replica_without_the_models_folder_fetches_from_the_store(make_settings, model_files, tmp_path):
    """Replicas on PostgreSQL need not share data_dir: model bytes travel through the store."""
    model, card = model_files()
    settings_a = make_settings(student={"model": str(model), "card": str(card)})
    settings_b = make_settings(data_dir=str(tmp_path / "replica-b"))
    with ServerThread(settings_a) as a, ServerThread(settings_b) as b:
        new = a.daemon.registry.register(mlp_onnx_bytes(seed=51), _card(), actor="test").version
        assert httpx.post(f"{a.url}/admin/models/{new}/activate", headers=TOKEN).status_code == 200
        eventually(
            lambda: httpx.post(b.url + "/v1/predict", json={"inputs": X}).json()["model_version"] == new
        )
        assert any(settings_b.models_dir.glob("*.onnx"))
