"""Sampling on the request path: `offer` keeps a sampled request, `admit` hands its rows on.

`offer` is called by `/v1/predict` after the student answered. At one rate for every row it
costs a subtraction per request (the rows up to the next sampled one are counted down), with
per-slice rates one random draw per row; per sampled request, one tuple appended to a list.
An admission task moves those requests' rows, a chunk at a time, to the sink: the shadow
process (shadow.py), where the teacher worker runs. `offer` never awaits, never raises, and a
row that finds the buffer full is dropped and counted.

Why the split: the sampled path runs for a fraction of requests, with its code out of the
caches, so every step on it costs several times what it costs in a loop; in the admission loop
the same steps run warm, a chunk of rows at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import Any, Protocol

import numpy as np

from distill_watchdog import metrics
from distill_watchdog.config import Settings
from distill_watchdog.shadow.slices import SliceRules
from distill_watchdog.shadow.waiting import Rows

log = logging.getLogger(__name__)

NEVER = 2**30 - 1  # the rows `offer` passes at rate 0 before it looks again (a one-digit int)
ADMIT_CHUNK = 64  # offered requests handed on per event-loop step
ADMIT_EVERY_S = 0.1  # how long offered requests gather before admission wakes: few, larger chunks
GAPS_AHEAD = 1024  # sampling gaps admission keeps drawn for `offer`
GAP_CAP = 2**62  # a gap never reached (a rate near the smallest float); fits numpy's int64

Offered = tuple[Any, np.ndarray, list[int], str, float]  # (request, probs, row indexes, version, time)


class Sink(Protocol):
    """Where admitted rows go: the shadow process (shadow.ShadowProcess) or, in tests, WaitingRows."""

    def __len__(self) -> int: ...  # rows handed on and not yet taken for a teacher batch

    def extend(self, rows: Rows) -> int: ...  # rows accepted, the first ones


class RequestSampler:
    """The daemon's `Sampler`: Bernoulli sampling per row, bounded by `sampling.queue_size`."""

    def __init__(self, settings: Settings, sink: Sink, feature_names: list[str] | None = None) -> None:
        self.cfg = settings.sampling
        self.sink = sink
        # Sampled requests as `offer` left them, until admission hands their rows on. `_kept`
        # counts their rows; `_room` is queue_size less the rows handed on and not yet taken, as
        # admission last saw it: kept and handed-on rows together stay within queue_size.
        self._offered: list[Offered] = []
        self._kept = 0
        self._room = self.cfg.queue_size
        self._ready = asyncio.Event()  # set when a request is offered to an empty list
        self.rules = SliceRules(settings.slices, self.cfg, feature_names)
        self.draw = random.Random().random
        # Rows still to pass before the next sampled one, at a constant rate; -1: none drawn yet,
        # or per-slice rates (each row draws).
        self._left = -1
        # Gaps drawn ahead by admission (`_draw_ahead`): `offer` pops one rather than drawing it.
        self._gaps: list[int] = []
        self._outcome_dropped = metrics.samples_total.labels(outcome="dropped")
        self.running = False

    def depth(self) -> int:
        """Rows sampled and not yet taken for a teacher batch (`watchdog_sample_queue_depth`)."""
        return len(self.sink) + self._kept

    # --- request path ----------------------------------------------------------------------------

    def offer(self, request: Any, probs: np.ndarray, version: str) -> None:
        """Bernoulli sampling per row; never blocks, never raises. A sampled request is kept as
        it is, for admission (`admit`): nothing else runs here, because here it runs cold."""
        try:
            left = self._left - len(probs)
            if left >= 0:  # one rate for all rows, and the next sampled row is further on: most requests
                self._left = left
                return
            hits = self._hits(request, len(probs))
            if not hits or not self.running:
                return
            offered = self._offered
            if not offered:
                self._ready.set()
            kept = self._kept + len(hits)
            if kept > self._room:  # the buffer is full
                self._outcome_dropped.inc(len(hits))
                return
            self._kept = kept
            offered.append((request, probs, hits, version, time.time()))
        except Exception:
            metrics.sampler_errors_total.labels(stage="offer").inc()
            log.exception("sampling: offer failed (request unaffected)")

    def _hits(self, request: Any, n: int) -> list[int]:
        """The request's rows to sample.

        At one rate for every row, the rows between two sampled ones are counted down rather than
        drawn one by one: Bernoulli sampling's gaps are geometric, so one draw per sampled row
        gives the same sample, and a row that is not sampled costs `offer` a subtraction.
        """
        # Python's `random` holds the GIL; numpy's Generator drops and re-takes it on every
        # call, which costs the event loop a GIL hand-off (up to 5 ms) under load.
        rate = self.rules.constant
        if rate is None:  # per-slice rates: each row draws at its own
            rates = self.rules.rates(request.x, request.slice)
            each = rates.tolist() if isinstance(rates, np.ndarray) else [rates] * n
            draw = self.draw
            return [i for i, r in enumerate(each) if draw() < r]
        hits: list[int] = []
        gaps = self._gaps
        i = self._left if self._left >= 0 else (gaps.pop() if gaps else self._gap(rate))
        while i < n:
            hits.append(i)
            i += 1 + (gaps.pop() if gaps else self._gap(rate))
        self._left = i - n
        return hits

    # --- admission -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Admission: woken by the first request offered to an empty list, it lets more gather
        for `ADMIT_EVERY_S`, then hands them on a chunk per event-loop step (a second of sampled
        requests at once would hold the loop for a millisecond or more)."""
        self._draw_ahead()
        while True:
            await self._ready.wait()
            await asyncio.sleep(ADMIT_EVERY_S)
            while self._offered:
                self.admit(ADMIT_CHUNK)
                if self._offered:
                    await asyncio.sleep(0)
            self._ready.clear()  # the next offer sets it again

    def admit(self, most: int | None = None) -> None:
        """Hands the rows of the oldest `most` offered requests (all by default) to the sink; rows
        it refuses (full, or gone) are dropped and counted."""
        offered = self._offered
        chunk = offered[:most] if most is not None else offered[:]
        del offered[: len(chunk)]
        self._kept -= sum(len(hits) for _, _, hits, _, _ in chunk)
        try:
            self._draw_ahead()
            if chunk and self.running:
                self._admit_rows(chunk)
        except Exception:
            metrics.sampler_errors_total.labels(stage="offer").inc()
            self._outcome_dropped.inc(sum(len(hits) for _, _, hits, _, _ in chunk))
            log.exception("sampling: could not admit %d sampled requests", len(chunk))
        self._room = self.cfg.queue_size - len(self.sink)

    def drop_kept(self) -> int:
        """Counts the requests kept and not yet admitted as dropped (shutdown); how many rows."""
        left = self._kept
        self._offered.clear()
        self._kept = 0
        if left:
            self._outcome_dropped.inc(left)
        return left

    def _admit_rows(self, chunk: list[Offered]) -> None:
        xs, ps, ids, at, versions, given = [], [], [], [], [], []
        for request, probs, hits, version, when in chunk:
            if len(hits) == len(probs):  # every row (one-row requests): the request's own arrays
                xs.append(request.x)
                ps.append(probs)
                ids += request.ids
            else:
                xs.append(request.x[hits])
                ps.append(probs[hits])
                ids += [request.ids[i] for i in hits]
            k = len(hits)
            at += [when] * k
            versions += [version] * k
            given += [request.slice] * k
        try:
            kept = self.sink.extend(Rows(np.concatenate(xs), np.concatenate(ps), ids, at, versions, given))
        except ValueError:  # rows of two widths: a student with other inputs was just activated
            kept = start = 0
            for x, p in zip(xs, ps, strict=True):  # request by request; the old width goes first
                end = start + len(x)
                part = ids[start:end], at[start:end], versions[start:end], given[start:end]
                kept += self.sink.extend(Rows(x, p, *part))
                start = end
        if kept < len(ids):
            self._outcome_dropped.inc(len(ids) - kept)

    def _draw_ahead(self) -> None:
        """Refills the gaps `_hits` pops, as `_gap` draws them but in one numpy step, off the
        request path: a draw per sampled request in `offer` would run cold."""
        rate, gaps = self.rules.constant, self._gaps
        if rate is not None and len(gaps) < GAPS_AHEAD // 2:
            k = GAPS_AHEAD - len(gaps)
            if 0.0 < rate < 1.0:
                draw = self.draw
                uniform = np.fromiter((draw() for _ in range(k)), np.float64, k)
                with np.errstate(over="ignore"):  # inf: a rate near the smallest float
                    drawn = np.log(1.0 - uniform) / math.log1p(-rate)
                ahead = np.minimum(drawn, GAP_CAP).astype(np.int64).tolist()
            else:
                ahead = [self._gap(rate)] * k
            ahead.reverse()
            gaps[:0] = ahead  # `pop` takes from the end: the draws are used in the order drawn

    def _gap(self, rate: float) -> int:
        """Rows before the next sampled one, at `rate` per row (geometric)."""
        if rate >= 1.0:
            return 0
        if rate <= 0.0:  # none: look again after this many rows, an int small enough for fast arithmetic
            return NEVER
        gap = math.log(1.0 - self.draw()) / math.log1p(-rate)  # inf for a rate near the smallest float
        return int(gap) if gap < GAP_CAP else GAP_CAP
