"""`make image` and `make image-test` from a clean clone: wall and CPU time of each, the phases
of the build, and the image's size (docs/BENCHMARKS.md, section "Image build and check").

    .venv/bin/python bench/image.py [--cold] [--clone /tmp/wd-image-bench]

The clone is made from this work tree's HEAD (commit first). Its build/ folder is empty, so the
wheelhouse is made anew; the base comes from the containers storage unless --cold removes it
first (then debootstrap runs too, as on a machine that never built the image). Needs root,
buildah and debootstrap.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

from common import ROOT, command_line, record

BUILDAH = ["buildah", "--storage-driver", "vfs"]
IMAGE = "localhost/distill-watchdog:dev"
BASE = "localhost/distill-watchdog-base:bookworm"


def timed(argv: list[str], cwd: Path, log: Path) -> dict:
    """Runs argv; wall seconds, CPU seconds of its children, exit code and its output's tail."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"code": code, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "tail": log.read_text()[-1500:]}


def size(image: str) -> str:
    out = subprocess.run([*BUILDAH, "images", "--format", "{{.Size}}", image], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clone", type=Path, default=Path("/tmp/wd-image-bench"))
    parser.add_argument("--cold", action="store_true", help="remove the cached base image first")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    shutil.rmtree(args.clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(args.clone)], check=True)
    if args.cold:
        subprocess.run([*BUILDAH, "rmi", BASE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load_before = os.getloadavg()
    logs = args.clone / "build"
    logs.mkdir(exist_ok=True)
    build = timed(["make", "image"], args.clone, logs / "bench-image.log")
    phases = {m[0]: int(m[1]) for m in re.findall(r"phase (\w+): (\d+) s", build["tail"])}
    check = (
        timed(["make", "image-test"], args.clone, logs / "bench-image-test.log") if build["code"] == 0 else {}
    )
    load_after = os.getloadavg()
    summary_path = args.clone / "build" / "image" / "test-summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    passed = [s for s in summary.get("steps", []) if s["passed"]]
    figures = summary.get("figures", {})
    image_size, base_size = size(IMAGE), size(BASE)

    rows = [
        ("`make image`", build["wall_s"], build["cpu_s"],
         "exit {code}; base {b} s ({how}), wheelhouse {w} s, buildah bud {u} s".format(
             code=build["code"], b=phases.get("base", "?"), w=phases.get("wheelhouse", "?"),
             u=phases.get("bud", "?"), how="debootstrap" if args.cold else "from the storage")),
        ("`make image-test`", check.get("wall_s", "-"), check.get("cpu_s", "-"),
         f"exit {check.get('code', '-')}; {len(passed)} of {len(summary.get('steps', []))} checks passed; "
         f"distill job {figures.get('distill_s', '?')} s, ready {figures.get('ready_s', '?')} s after start"),
    ]  # fmt: skip
    table = "\n".join(
        ["| step | wall s | CPU s | detail |", "|---|---:|---:|---|"]
        + [f"| {name} | {wall} | {cpu} | {detail} |" for name, wall, cpu, detail in rows]
        + [
            "",
            "| image | size (buildah images) |",
            "|---|---:|",
            f"| `{IMAGE}` | {image_size} |",
            f"| `{BASE}` (debootstrap, slimmed) | {base_size} |",
        ]
    )
    notes = (
        f"A clean clone of {head.stdout.strip()} ({'base removed first' if args.cold else 'base cached'}). "
        f"Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on a machine shared with "
        "other work: wall times are that run's, the CPU time is the build's own (children of make)."
    )
    print(table)
    print(notes)
    record(
        "image",
        "Image build and check (buildah)",
        command_line(),
        table,
        notes,
        {"build": build, "phases": phases, "check": check, "summary": summary, "image_size": image_size,
         "base_size": base_size, "load": [load_before, load_after], "cold": args.cold},
    )  # fmt: skip
    if build["code"] or check.get("code"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
