"""Progress reporting and cancellation: a tqdm bar on a TTY, JSON lines otherwise."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from .errors import Cancelled

ProgressCallback = Callable[[dict[str, Any]], None]
CancelToken = threading.Event | Callable[[], bool] | None


class Progress:
    """Receives events `{"event": ..., ...}`; epoch events advance the bar.

    `sink` may be a callback (gets every event), "json" (lines on `stream`), "tqdm", "none",
    or None (tqdm when `stream` is a TTY, JSON lines otherwise).
    """

    def __init__(
        self,
        sink: ProgressCallback | str | None = None,
        stream: TextIO | None = None,
        cancel: CancelToken = None,
        enabled: bool = True,
    ) -> None:
        self.stream = stream or sys.stderr
        self.cancel = cancel
        self._bar: Any = None
        self._callback: ProgressCallback | None = None
        if not enabled or sink == "none":
            self.mode = "none"
        elif callable(sink):
            self.mode = "callback"
            self._callback = sink
        elif sink in ("json", "tqdm"):
            self.mode = str(sink)
        else:
            self.mode = "tqdm" if getattr(self.stream, "isatty", lambda: False)() else "json"

    def check_cancelled(self) -> None:
        """Raise Cancelled when the token is set (Event) or returns True (callable)."""
        c = self.cancel
        if c is None:
            return
        if c.is_set() if isinstance(c, threading.Event) else c():
            raise Cancelled("distillation cancelled")

    def emit(self, event: str, **fields: Any) -> None:
        """Report one event."""
        rec = {"event": event, **fields}
        if self.mode == "callback" and self._callback is not None:
            self._callback(rec)
        elif self.mode == "json":
            self.stream.write(json.dumps(rec, default=float) + "\n")
            self.stream.flush()
        elif self.mode == "tqdm":
            self._tqdm(rec)

    def _tqdm(self, rec: dict[str, Any]) -> None:
        from tqdm import tqdm

        if rec["event"] == "phase_start":
            self.close()
            self._bar = tqdm(
                total=rec.get("epochs"), desc=str(rec.get("phase", "")), file=self.stream, leave=False
            )
        elif rec["event"] == "epoch" and self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in rec.items() if isinstance(v, float)})
        elif rec["event"] == "done":
            self.close()

    def close(self) -> None:
        """Close an open bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
