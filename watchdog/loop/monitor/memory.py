"""Peak resident memory of this process during one monitor cycle (Linux), for the cycle record."""

from __future__ import annotations

import contextlib
import resource


def reset_peak_rss() -> None:
    """Starts a new peak: writing 5 to clear_refs resets VmHWM (Linux 4.0+); elsewhere the
    process's lifetime peak is reported instead."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss_bytes() -> int:
    """VmHWM since `reset_peak_rss`, or the lifetime peak (getrusage) where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
