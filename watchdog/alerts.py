"""Alert senders: Alertmanager's v2 API and generic JSON webhooks.

`fire` and `resolve` only touch memory and a bounded queue, so any part of the daemon (even
the request path) may call them; a sender task delivers with retries and backoff. An alert's
identity is its labels (as in Alertmanager): a firing alert is re-sent every
`alerts.repeat_s` (Alertmanager expires alerts that are not refreshed), and the same labels
fired again within that time are suppressed and counted, whatever their annotations say
(the newest annotations go out with the next re-send).

No alert ends sooner than `notice_s` = max(`repeat_s`, `min_notice_s`) after it started: one
resolved earlier is sent at once with that end time (Alertmanager keeps it active until then)
and its resolution follows at that time. Alertmanager holds a new alert for its `group_wait`
before notifying; an alert resolved within it would reach nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from distill_watchdog import metrics
from distill_watchdog.config import AlertsConfig

if TYPE_CHECKING:
    from distill_watchdog.app import Daemon

log = logging.getLogger(__name__)

Key = tuple[tuple[str, str], ...]


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Alert:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None = None
    last_sent: float = 0.0

    def alertmanager(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": rfc3339(self.starts_at),
        }
        if self.ends_at is not None:
            body["endsAt"] = rfc3339(self.ends_at)
        return body

    def webhook(self) -> dict[str, Any]:
        resolved = self.ends_at is not None and self.ends_at <= time.time()
        return {"status": "resolved" if resolved else "firing", **self.alertmanager()}


class Alerter:
    """A daemon component; also usable stand-alone (`start(None)`)."""

    slot = "alerts"  # the Daemon field create_app fills with it

    def __init__(self, cfg: AlertsConfig, service: str = "distill-watchdog") -> None:
        self.cfg = cfg
        self.service = service
        self.active: dict[Key, Alert] = {}
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(cfg.queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    @property
    def notice_s(self) -> float:
        """The shortest life of an alert: long enough to be delivered."""
        return max(self.cfg.repeat_s, self.cfg.min_notice_s)

    @property
    def receivers(self) -> list[tuple[str, str]]:
        out = [("webhook", url) for url in self.cfg.webhook_urls]
        if self.cfg.alertmanager_url:
            out.insert(0, ("alertmanager", self.cfg.alertmanager_url.rstrip("/") + "/api/v2/alerts"))
        return out

    async def start(self, daemon: Daemon | None) -> None:
        self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._send_forever()), loop.create_task(self._refresh_forever())]

    async def stop(self) -> None:
        # Deliver what is queued (bounded by one round of timeouts), then stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), self.cfg.timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()

    # --- the non-blocking API --------------------------------------------------------------------

    def _labels(self, name: str, labels: dict[str, str]) -> dict[str, str]:
        return {"alertname": name, "service": self.service, **{k: str(v) for k, v in labels.items()}}

    def fire(
        self, name: str, labels: dict[str, str], annotations: dict[str, str], ttl_s: float | None = None
    ) -> None:
        """Raises an alert; `ttl_s` makes it a one-shot notice that ends by itself.

        An alert is its labels: firing the same labels again within `alerts.repeat_s` sends
        nothing (counted as suppressed), even when the text changed; the new annotations go out
        with the next refresh. Whatever a receiver routes or silences on belongs in the labels.
        """
        full = self._labels(name, labels)
        key: Key = tuple(sorted(full.items()))
        now = time.time()
        current = self.active.get(key)
        if current is not None and current.ends_at is None and now - current.last_sent < self.cfg.repeat_s:
            current.annotations = dict(annotations)
            metrics.alerts_total.labels(receiver="all", outcome="suppressed").inc()
            return
        alert = Alert(full, dict(annotations), current.starts_at if current else now)
        if ttl_s is not None:
            alert.ends_at = max(now + ttl_s, alert.starts_at + self.notice_s)
            self.active.pop(key, None)
        else:
            self.active[key] = alert
        self._enqueue(alert)

    def resolve(self, name: str, labels: dict[str, str] | None = None) -> int:
        """Ends every firing `name` alert whose labels include `labels`, not before `notice_s`
        after it started; returns how many."""
        want = self._labels(name, labels or {})
        now = time.time()
        ended = 0
        for key, alert in list(self.active.items()):
            if alert.ends_at is not None or any(alert.labels.get(k) != v for k, v in want.items()):
                continue
            ended += 1
            ends = alert.starts_at + self.notice_s
            if ends <= now:
                del self.active[key]
                self._enqueue(Alert(alert.labels, alert.annotations, alert.starts_at, ends_at=now))
                continue
            # Still active here until then (`_refresh_forever` ends it). A new object: the one
            # being replaced may still wait in the queue, to be sent as it was.
            self.active[key] = Alert(alert.labels, alert.annotations, alert.starts_at, ends_at=ends)
            self._enqueue(Alert(alert.labels, alert.annotations, alert.starts_at, ends_at=ends))
        return ended

    def _end_due(self, now: float) -> None:
        """Sends the resolution of alerts whose end, held back by `notice_s`, has come."""
        for key, alert in list(self.active.items()):
            if alert.ends_at is not None and alert.ends_at <= now:
                del self.active[key]
                self._enqueue(Alert(alert.labels, alert.annotations, alert.starts_at, ends_at=alert.ends_at))

    def reconcile(
        self,
        name: str,
        firing: list[tuple[dict[str, str], dict[str, str]]],
        scope: dict[str, str] | None = None,
    ) -> None:
        """Makes the `name` alerts within `scope` exactly `firing` (labels, annotations): fires
        those, resolves the others (e.g. one alert per weak slice, resolved per slice)."""
        keep = {tuple(sorted(self._labels(name, labels).items())) for labels, _ in firing}
        want = self._labels(name, scope or {})
        for key, alert in list(self.active.items()):
            if key not in keep and all(alert.labels.get(k) == v for k, v in want.items()):
                self.resolve(name, dict(key))
        for labels, notes in firing:
            self.fire(name, labels, notes)

    def firing(self, name: str) -> list[dict[str, str]]:
        """Labels of the firing `name` alerts (those ending after their notice excluded)."""
        return [
            dict(a.labels)
            for a in self.active.values()
            if a.labels.get("alertname") == name and a.ends_at is None
        ]

    def _enqueue(self, alert: Alert) -> None:
        alert.last_sent = time.time()
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            metrics.alerts_total.labels(receiver="queue", outcome="failed").inc()
            log.error("alerts: queue full, dropped %s", alert.labels.get("alertname"))

    # --- delivery --------------------------------------------------------------------------------

    async def _send_forever(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                await asyncio.gather(*(self._deliver(kind, url, alert) for kind, url in self.receivers))
            finally:
                self.queue.task_done()

    async def _deliver(self, kind: str, url: str, alert: Alert) -> None:
        assert self._client is not None
        body: Any = [alert.alertmanager()] if kind == "alertmanager" else alert.webhook()
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.retries + 1):
            try:
                response = await self._client.post(url, json=body)
                if response.status_code < 300:
                    metrics.alerts_total.labels(receiver=kind, outcome="sent").inc()
                    return
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    break  # the receiver refuses this alert; retrying will not help
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt < self.cfg.retries:
                await asyncio.sleep(delay)
                delay *= 2
        metrics.alerts_total.labels(receiver=kind, outcome="failed").inc()
        log.error("alerts: %s delivery of %s failed (%s)", kind, alert.labels.get("alertname"), problem)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.cfg.repeat_s / 2, 1.0))
            now = time.time()
            self._end_due(now)
            for alert in list(self.active.values()):
                if alert.ends_at is None and now - alert.last_sent >= self.cfg.repeat_s:
                    self._enqueue(alert)
