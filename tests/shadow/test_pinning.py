"""A hosted teacher changes version under the daemon: event, metrics, quarantine, re-evaluation, accept."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from distill_watchdog.server import default_components

from .helpers import ADMIN, counter, daemon_settings, eventually, predict, sample_count, teacher_config
from support import ServerThread, get_pin, recent_samples
from teachers.fake_teacher import FakeTeacher


@pytest.fixture
def teacher():
    with FakeTeacher(version="v1") as t:
        yield t


def _serve(settings):
    return ServerThread(settings, default_components(settings))


def _events(store) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.from_version, e.to_version) for e in reversed(store.teacher_events("big"))]


def _alert(server, name: str = "WatchdogTeacherVersionChanged") -> dict[str, str] | None:
    """The annotations of the daemon's firing alert `name` (None when it is not firing)."""
    for alert in list(server.daemon.alerts.active.values()):
        if alert.labels["alertname"] == name and alert.ends_at is None:
            return alert.annotations
    return None


def test_quarantine_waits_for_a_person_even_after_a_passing_reevaluation(
    make_settings, model_files, teacher
) -> None:
    """The default policy: a new version stays quarantined, its alert firing with the
    re-evaluation attached, until a person accepts it; nothing is accepted automatically."""
    settings = daemon_settings(
        make_settings, model_files, [teacher_config(teacher.url)], sampling={"eval_set_size": 8}
    )
    assert settings.sampling.on_teacher_change == "quarantine"
    with _serve(settings) as server:
        store = server.daemon.store
        predict(server.url, rows=8)
        eventually(lambda: store.eval_count("big") == 8, what="eval set frozen from the first 8 samples")
        teacher.version = "v2"  # same answers, new version: re-evaluation passes
        predict(server.url, rows=4, seed=1)
        eventually(lambda: ("reeval_passed", "v1", "v2") in _events(store), what="re-evaluation passed")
        eventually(lambda: store.count_samples(quarantined=True) == 4, what="v2 rows stored quarantined")
        notes = eventually(
            lambda: (n := _alert(server)) and n["reevaluation"].startswith("passed") and n, what="alert"
        )
        assert notes["new_version"] == "v2" and notes["pinned_version"] == "v1"
        assert "agreement 1.000 on 8 rows" in notes["reevaluation"]
        assert "until a person accepts it" in notes["summary"]
        predict(server.url, rows=3, seed=2)  # more v2 rows: still quarantined
        eventually(lambda: store.count_samples(quarantined=True) == 7, what="later v2 rows quarantined")
        assert get_pin(store, "big").pinned_version == "v1"
        assert _alert(server) is not None
        assert not any(a.action.startswith("teacher.") for a in store.audit_events())
        status = httpx.get(f"{server.url}/admin/teachers", headers=ADMIN).json()["teachers"][0]
        assert status["state"] == "quarantine" and status["candidate_version"] == "v2"
        assert status["reevaluation"]["passed"] is True and status["reevaluation"]["rows"] == 8
        dashboard = httpx.get(f"{server.url}/ui/").text
        assert "passed: agreement 1.000 on 8 rows" in dashboard

        reply = httpx.post(
            f"{server.url}/admin/teachers/big/accept", headers=ADMIN, json={"reason": "same model"}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["pinned_version"] == "v2", (reply.json(), _events(store))
        assert store.count_samples(quarantined=True) == 0, (reply.json(), _events(store))
        eventually(lambda: _alert(server) is None, what="alert resolved on accept")
        assert any(a.action == "teacher.accepted" and a.actor == "admin-api" for a in store.audit_events())


def test_reevaluate_policy_accepts_a_version_that_passes(make_settings, model_files, teacher) -> None:
    settings = daemon_settings(
        make_settings,
        model_files,
        [teacher_config(teacher.url)],
        sampling={"eval_set_size": 8, "on_teacher_change": "reevaluate"},
    )
    changes_before = counter("watchdog_teacher_version_changes_total", teacher="big")
    quarantined_before, stored_before = sample_count("quarantined"), sample_count("stored")
    with _serve(settings) as server:
        store = server.daemon.store
        predict(server.url, rows=8)
        eventually(lambda: store.eval_count("big") == 8, what="eval set frozen from the first 8 samples")
        teacher.version = "v2"  # same answers, new version: re-evaluation must pass
        predict(server.url, rows=4, seed=1)
        eventually(lambda: ("accepted", "v1", "v2") in _events(store), what="accepted after re-evaluation")
        eventually(
            lambda: store.count_samples() == 12 and store.count_samples(quarantined=True) == 0,
            what="quarantine released",
        )
        assert _events(store)[:3] == [
            ("pinned", None, "v1"),
            ("changed", "v1", "v2"),
            ("reeval_passed", "v1", "v2"),
        ]

        # The v2 rows were quarantined until the pass, or written after it: never counted as trusted twice.
        def both() -> float:
            return sample_count("quarantined") - quarantined_before + sample_count("stored") - stored_before

        eventually(lambda: both() == 12, what="rows counted once each (counted after the write)")
        assert counter("watchdog_teacher_version_changes_total", teacher="big") - changes_before == 1
        assert counter("watchdog_teacher_reevaluations_total", teacher="big", outcome="passed") >= 1
        assert counter("watchdog_teacher_version_info", teacher="big", version="v2", pinned="true") == 1
        assert counter("watchdog_teacher_version_info", teacher="big", version="v1", pinned="true") == 0
        assert any(a.action == "teacher.accepted" and a.actor == "reeval" for a in store.audit_events())
        status = httpx.get(f"{server.url}/admin/teachers", headers=ADMIN).json()["teachers"][0]
        assert status["pinned_version"] == "v2" and status["state"] == "ok"
        # Resolved, but not before it could be delivered: it ends alerts.min_notice_s after it began.
        alert = next(
            a
            for a in server.daemon.alerts.active.values()
            if a.labels["alertname"] == "WatchdogTeacherVersionChanged"
        )
        assert alert.ends_at == alert.starts_at + server.daemon.alerts.notice_s
        assert server.daemon.alerts.notice_s == 60.0


def test_failed_reevaluation_keeps_quarantine_until_an_operator_accepts(
    make_settings, model_files, teacher, tmp_path
) -> None:
    x = np.random.default_rng(5).normal(size=(30, 40)).astype(np.float32)
    eval_file = tmp_path / "eval.npz"
    np.savez(eval_file, x=x, y=teacher.probs(x).argmax(1), slice=np.array(["a"] * 30))
    settings = daemon_settings(
        make_settings, model_files, [teacher_config(teacher.url)], sampling={"eval_set": str(eval_file)}
    )
    quarantined_before = sample_count("quarantined")
    with _serve(settings) as server:
        store = server.daemon.store
        eventually(lambda: store.eval_count("big") == 30, what="eval set labelled from the file")
        assert {r.source for r in store.eval_rows("big")} == {"file"}
        teacher.version, teacher.shift = "v2", 3  # a different model: agreement collapses
        predict(server.url, rows=4)
        eventually(
            lambda: any(k == "reeval_failed" for k, _, _ in _events(store)), what="re-evaluation failed"
        )
        eventually(lambda: store.count_samples(quarantined=True) == 4, what="rows written as quarantined")
        eventually(lambda: sample_count("quarantined") - quarantined_before == 4, what="quarantined counted")
        assert recent_samples(store, 10) == []  # quarantined rows are not handed downstream
        status = httpx.get(f"{server.url}/admin/teachers", headers=ADMIN).json()
        assert status["teachers"][0]["state"] == "quarantine"
        assert status["teachers"][0]["candidate_version"] == "v2"
        failed = next(e for e in status["events"] if e["kind"] == "reeval_failed")
        assert failed["detail"]["agreement"] < 0.95 and failed["detail"]["accuracy_new"] < 1.0

        url = f"{server.url}/admin/teachers/big/accept"
        assert httpx.post(url, json={}).status_code == 401
        assert httpx.post(f"{server.url}/admin/teachers/nope/accept", headers=ADMIN).status_code == 404
        reply = httpx.post(url, headers=ADMIN, json={"reason": "vendor upgrade reviewed"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["pinned_version"] == "v2" and reply.json()["state"] == "ok"
        assert store.count_samples(quarantined=True) == 0
        audit = next(a for a in store.audit_events() if a.action == "teacher.accepted")
        assert audit.actor == "admin-api" and audit.subject == "big" and "vendor upgrade" in audit.detail_json
        assert httpx.post(url, headers=ADMIN).status_code == 409  # nothing left to accept


def test_pause_policy_stops_sampling_until_accepted(make_settings, model_files, teacher) -> None:
    settings = daemon_settings(
        make_settings, model_files, [teacher_config(teacher.url)], sampling={"on_teacher_change": "pause"}
    )
    with _serve(settings) as server:
        store = server.daemon.store
        predict(server.url, rows=2)
        eventually(lambda: store.count_samples() == 2, what="first rows")
        teacher.version = "v2"
        predict(server.url, rows=2, seed=1)
        eventually(lambda: store.count_samples() == 4, what="the rows that saw the change")
        eventually(lambda: any(k == "reeval_failed" for k, _, _ in _events(store)), what="no eval set yet")
        predict(server.url, rows=5, seed=2)  # paused: not sampled
        assert httpx.post(f"{server.url}/admin/teachers/big/accept", headers=ADMIN).status_code == 200
        predict(server.url, rows=3, seed=3)
        eventually(lambda: store.count_samples() == 7, what="sampling resumed")


def test_accept_policy_moves_the_pin_at_once(make_settings, model_files, teacher) -> None:
    settings = daemon_settings(
        make_settings,
        model_files,
        [teacher_config(teacher.url, pinned_version="v0")],
        sampling={"on_teacher_change": "accept"},
    )
    with _serve(settings) as server:
        store = server.daemon.store
        predict(server.url, rows=3)
        eventually(lambda: store.count_samples() == 3, what="rows stored")
        assert store.count_samples(quarantined=True) == 0
        assert _events(store) == [("changed", "v0", "v1")]
        assert get_pin(store, "big").pinned_version == "v1"


def _refresh(pins) -> bool:
    """What the sampler does on each store poll, on one thread: adopt what other replicas stored."""
    return pins.adopt(pins.read_stored())


def test_a_pin_accepted_on_one_replica_is_adopted_by_the_other(store_url) -> None:
    from distill_watchdog.shadow.teachers.pinning import Pins
    from distill_watchdog.store import Store

    one, two = Pins(Store(store_url), "quarantine"), Pins(Store(store_url), "quarantine")
    for pins in (one, two):
        pins.load({"big": None})
    one.observe("big", "v1")
    one.persist()
    assert _refresh(two) and two.teachers["big"].pinned == "v1"
    for pins in (one, two):
        assert pins.observe("big", "v2").quarantined
        pins.persist()
    one.accept("big", "v2", actor="operator")
    one.persist()
    assert _refresh(two)
    assert two.teachers["big"].pinned == "v2" and two.teachers["big"].state == "ok"
    assert not two.observe("big", "v2").quarantined
    assert not _refresh(two)  # nothing new


def test_a_stored_pin_read_before_a_local_change_does_not_undo_it(store_url) -> None:
    """The sampler reads the store in a thread while the event loop observes a new version."""
    from distill_watchdog.shadow.teachers.pinning import Pins
    from distill_watchdog.store import Store

    pins = Pins(Store(store_url), "quarantine")
    pins.load({"big": None})
    pins.observe("big", "v1")
    pins.persist()
    stale = pins.read_stored()  # v1, no candidate
    assert pins.observe("big", "v2").quarantined
    assert not pins.adopt(stale)  # the change is still pending
    pins.persist()
    assert not pins.adopt(stale)  # persisted after the read
    state = pins.teachers["big"]
    assert (state.pinned, state.candidate, state.state) == ("v1", "v2", "quarantine")
    assert not pins.adopt(pins.read_stored())  # a fresh read agrees


def test_paused_follows_every_change_of_state(store_url) -> None:
    """Admission reads `paused` for each chunk of sampled requests; every change of state updates it."""
    from distill_watchdog.shadow.teachers.pinning import Pins
    from distill_watchdog.store import Store

    one, two = Pins(Store(store_url), "pause"), Pins(Store(store_url), "pause")
    for pins in (one, two):
        pins.load({"big": None})
        assert not pins.paused
    one.observe("big", "v1")
    assert not one.paused
    assert one.observe("big", "v2").quarantined and one.paused  # a change under the pause policy
    one.persist()
    assert _refresh(two) and two.paused  # adopted from another replica
    restarted = Pins(Store(store_url), "pause")
    restarted.load({"big": None})
    assert restarted.paused  # read back at start
    one.accept("big", "v2", actor="operator")
    assert not one.paused
    one.persist()
    assert _refresh(two) and not two.paused


def test_a_stored_pin_read_before_an_accept_does_not_undo_it_during_the_write(store_url) -> None:
    """The sampler adopts a snapshot on the event loop while an accept is being written in a
    thread: the accept must be seen as pending (or persisted) throughout the write."""
    from distill_watchdog.shadow.teachers.pinning import Pins
    from distill_watchdog.store import Store

    pins = Pins(Store(store_url), "quarantine")
    pins.load({"big": None})
    pins.observe("big", "v1")
    pins.observe("big", "v2")
    pins.persist()
    stale = pins.read_stored()  # v1 pinned, v2 waiting
    pins.accept("big", None, actor="operator")
    undone: list[bool] = []
    save_pin = pins.store.save_pin

    def save_while_adopting(pin, event) -> None:  # the event loop's turn, mid-write
        undone.append(pins.adopt(stale))
        save_pin(pin, event)
        undone.append(pins.adopt(stale))

    pins.store.save_pin = save_while_adopting  # type: ignore[method-assign]
    pins.persist()
    assert undone == [False, False]
    state = pins.teachers["big"]
    assert (state.pinned, state.candidate, state.state) == ("v2", None, "ok")
