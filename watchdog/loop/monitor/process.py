"""The monitor's child process: imports the heavy libraries once, then answers one cycle per line.

Protocol: the parent writes `{"op": "cycle"}` lines to stdin; the child answers one JSON line
on stdout (`{"ok": true, "result": {...}}` or `{"ok": false, "error": "..."}`). Logs go to
stderr. It runs at lower CPU priority so the serving process keeps its latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True, help="JSON dump of the daemon's settings")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Its CPUs and idle priority are set by the daemon when it starts this process (background.py).
    from distill_watchdog.config import Settings
    from distill_watchdog.loop.monitor import drift  # noqa: F401  (warm the imports before the first cycle)
    from distill_watchdog.loop.monitor.cycle import run_cycle
    from distill_watchdog.registry import Registry
    from distill_watchdog.store import Store

    with open(args.settings) as fh:
        settings = Settings(**json.load(fh))
    store = Store(settings.store_url)
    registry = Registry(store, settings.models_dir, ort_threads=1)
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not break the protocol
    out.write(json.dumps({"ok": True, "ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") != "cycle":
                raise ValueError(f"unknown op {request.get('op')!r}")
            answer = {"ok": True, "result": run_cycle(settings, store, registry)}
        except Exception as exc:
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        import orjson

        out.write(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode())
        out.write("\n")
        out.flush()


if __name__ == "__main__":
    main()
