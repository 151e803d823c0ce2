#!/usr/bin/env python3
"""Runs the built image as a user would, with buildah (`make image-test`; no Docker engine needed).

In one working container of the image, each step as the image's USER (uid 10001) with a host
folder mounted at /data: the CPU build of torch and no development tools in it; a distillation
job (`distill --job`) that writes student.onnx, card.json, result.json and report.html;
`models register` of that student; the ENTRYPOINT (`serve`) ready within 60 s; the HEALTHCHECK
command; /v1/predict, the admin API and /metrics; SIGTERM drains a request in flight and stops
every process of the daemon. The ENTRYPOINT, HEALTHCHECK, USER and environment are read from the
image, not restated here.

`buildah run --isolation chroot` shares the host's network, so the daemon listens on a free
loopback port (WATCHDOG__SERVER__HOST/PORT, as a user publishing another port would set them).
Standard library only: it runs with the host's python3, without the project's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

BUILDAH = ["buildah", "--storage-driver", "vfs"]
ROOT = Path(__file__).resolve().parents[2]
# Pinned only in requirements/dev.txt: none of them may be in the image.
DEV_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "schemathesis", "ruff", "fastapi", "tritonclient"}
READY_WITHIN_S = 60.0

# Made inside the image: a teacher (a small MLP trained on three Gaussian classes, exported to
# ONNX with probabilities out) and the job's data, as a user brings them.
MAKE_JOB = r"""
import numpy as np, torch, yaml
from distill_engine.export import export_onnx
from distill_engine.zoo import mlp

D, C = 8, 3
centers = np.random.default_rng(123).normal(0, 1.6, size=(C, D))

def blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    return (centers[y] + rng.normal(0, 1.0, size=(n, D))).astype(np.float32), y.astype(np.int64)

class Softmax(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
    def forward(self, x):
        return torch.softmax(self.m(x), dim=1)

torch.manual_seed(0)
x, y = blobs(1500, 100)
teacher = mlp(D, C, hidden=(32, 32))
opt = torch.optim.Adam(teacher.parameters(), lr=0.01)
for _ in range(200):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(teacher(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    opt.step()
export_onnx(Softmax(teacher.eval()), D, "teacher.onnx")
for name, seed, n in (("train", 1, 600), ("eval", 2, 300)):
    xs, ys = blobs(n, seed)
    np.savez(name + ".npz", x=xs, y=ys, slice=np.where(xs[:, 0] > 0, "a", "b"))
job = {
    "name": "image-test",
    "student": {"factory": "distill_engine.zoo:mlp", "kwargs": {"hidden": [16]}},
    "teachers": [{"name": "big", "kind": "onnx", "path": "teacher.onnx"}],
    "data": {"train": "train.npz", "eval": "eval.npz"},
    "loss": {"temperature": 2.0, "kd_weight": 0.7},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 0},
}
open("job.yaml", "w").write(yaml.safe_dump(job))
"""


class Failed(Exception):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def children(pid: int) -> list[int]:
    """Every live descendant of pid (from /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            kids.setdefault(parent(int(entry.name)), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def owner(pid: int) -> int:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return -1


def alive(pid: int, was: str) -> bool:
    return cmdline(pid) == was and was != ""


class ImageRun:
    """One working container of the image; commands run in it as the image's USER."""

    def __init__(self, image: str, work: Path) -> None:
        self.image, self.work = image, work
        self.data = work / "data"
        self.logs = work / "logs"
        self.config = self._inspect()
        self.container = f"distill-watchdog-image-test-{os.getpid()}"
        self.env: dict[str, str] = {}

    def _inspect(self) -> dict:
        out = subprocess.run(
            [*BUILDAH, "inspect", "--type", "image", self.image], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(
                f"image-test: {self.image} is not in the containers storage; run `make image` first"
            )
        return json.loads(out.stdout)["Docker"]["config"]

    def image_env(self, key: str) -> str:
        for item in self.config.get("Env") or []:
            name, _, value = item.partition("=")
            if name == key:
                return value
        raise Failed(f"the image sets no {key}")

    def __enter__(self) -> ImageRun:
        shutil.rmtree(self.work, ignore_errors=True)
        self.data.mkdir(parents=True)
        self.logs.mkdir()
        uid, _, gid = (self.config.get("User") or "0").partition(":")
        os.chown(self.data, int(uid), int(gid or uid))  # as a user prepares a bind-mounted volume
        volume = self.image_env("WATCHDOG__DATA_DIR")
        self.mount = ["-v", f"{self.data}:{volume}:rw"]
        subprocess.run([*BUILDAH, "from", "--pull=never", "--quiet", "--name", self.container, self.image],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        # buildah run would put an empty volume of its own over the -v at the image's VOLUME
        # path; the working container drops the declaration (the image keeps it).
        subprocess.run([*BUILDAH, "config", "--volume", f"{volume}-", self.container], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*BUILDAH, "rm", self.container], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def argv(self, command: list[str], workdir: str | None = None) -> list[str]:
        env = [a for k, v in self.env.items() for a in ("--env", f"{k}={v}")]
        where = ["--workingdir", workdir] if workdir else []
        return [
            *BUILDAH,
            "run",
            "--isolation",
            "chroot",
            *self.mount,
            *env,
            *where,
            self.container,
            "--",
            *command,
        ]

    def run(
        self, command: list[str], timeout: float = 600, workdir: str | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command, workdir), capture_output=True, text=True, timeout=timeout)

    def ok(self, command: list[str], timeout: float = 600, workdir: str | None = None) -> str:
        out = self.run(command, timeout, workdir)
        check(
            out.returncode == 0,
            f"{' '.join(command)} exited {out.returncode}:\n{out.stdout[-2000:]}{out.stderr[-3000:]}",
        )
        return out.stdout


class Suite:
    def __init__(self, run: ImageRun) -> None:
        self.run = run
        self.results: list[tuple[str, bool, str, float]] = []
        self.figures: dict[str, float | str] = {}
        self.version = ""
        self.base = ""
        self.daemon: subprocess.Popen | None = None
        self.token = secrets.token_hex(24)

    def step(self, name: str, fn: Callable[[], str]) -> bool:
        start = time.monotonic()
        try:
            detail = fn()
            passed = True
        except Failed as err:
            detail, passed = str(err), False
        except Exception as err:  # a broken step still ends with the summary line
            detail, passed = f"{type(err).__name__}: {err}", False
        took = time.monotonic() - start
        self.results.append((name, passed, detail, took))
        mark = "ok  " if passed else "FAIL"
        print(f"{mark} {name} ({took:.1f} s){': ' + detail if detail else ''}", flush=True)
        return passed

    # --- the image itself ------------------------------------------------------------------------

    def user(self) -> str:
        uid, gid = self.run.ok(["id", "-u"]).strip(), self.run.ok(["id", "-g"]).strip()
        check(uid == "10001" and gid == "10001", f"runs as {uid}:{gid}, not 10001:10001")
        return f"uid {uid}, gid {gid}"

    def cpu_torch(self) -> str:
        out = self.run.ok(["python", "-c", "import torch; print(torch.__version__, torch.version.cuda)"])
        version, cuda = out.split()
        check(cuda == "None", f"torch {version} is a CUDA build ({cuda})")
        return f"torch {version}, torch.version.cuda is None"

    def runtime_only(self) -> str:
        listed = json.loads(self.run.ok(["python", "-m", "pip", "list", "--format=json"]))
        names = {p["name"].lower() for p in listed}
        dev_pins = {
            line.split("==")[0].lower()
            for line in (ROOT / "requirements" / "dev.txt").read_text().splitlines()
            if "==" in line
        }
        found = (names & DEV_TOOLS) | (names & dev_pins)
        check(not found, f"development packages in the image: {sorted(found)}")
        return f"{len(names)} packages, none of requirements/dev.txt"

    # --- a user's session ------------------------------------------------------------------------

    def distill(self) -> str:
        job_dir = self.run.image_env("WATCHDOG__DATA_DIR") + "/job"
        self.run.ok(["mkdir", "-p", job_dir])
        self.run.ok(["python", "-c", MAKE_JOB], workdir=job_dir)
        out_dir = self.run.image_env("WATCHDOG__DATA_DIR") + "/runs/image-test"
        start = time.monotonic()
        self.run.ok(["distill-watchdog", "distill", "--job", f"{job_dir}/job.yaml", "--out", out_dir])
        self.figures["distill_s"] = round(time.monotonic() - start, 1)
        host_out = self.run.data / "runs" / "image-test"
        for name in ("student.onnx", "card.json", "result.json", "report.html"):
            path = host_out / name
            check(path.is_file() and path.stat().st_size > 0, f"{name} missing in {host_out}")
            check(path.stat().st_uid == 10001, f"{name} is owned by uid {path.stat().st_uid}, not 10001")
        result = json.loads((host_out / "result.json").read_text())
        check(result["onnx_parity"]["ok"], f"ONNX parity failed: {result['onnx_parity']}")
        accuracy = result["student"]["accuracy"]
        check(accuracy > 0.5, f"the student's accuracy is {accuracy} on three classes")
        return f"student accuracy {accuracy:.3f}, the 4 files owned by uid 10001"

    def register(self) -> str:
        out_dir = self.run.image_env("WATCHDOG__DATA_DIR") + "/runs/image-test"
        out = self.run.ok(["distill-watchdog", "models", "register", f"{out_dir}/student.onnx",
                           "--card", f"{out_dir}/card.json", "--activate"])  # fmt: skip
        self.version = out.strip().splitlines()[-1]
        listed = self.run.ok(["distill-watchdog", "models", "list"])
        check(f"* {self.version}" in listed, f"{self.version} is not active:\n{listed}")
        return f"version {self.version} active"

    def healthcheck_argv(self) -> list[str]:
        test = (self.run.config.get("Healthcheck") or {}).get("Test") or []
        check(test, "the image has no HEALTHCHECK")
        return list(test[1:]) if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]

    def health_fails_before_start(self) -> str:
        out = self.run.run(self.healthcheck_argv(), timeout=60)
        check(out.returncode != 0, "the HEALTHCHECK passed with no daemon running")
        return f"exit {out.returncode} with no daemon"

    def serve(self) -> str:
        port = free_port()
        self.run.env = {
            "WATCHDOG__SERVER__HOST": "127.0.0.1",
            "WATCHDOG__SERVER__PORT": str(port),
            "WATCHDOG__SERVER__ADMIN_TOKEN": self.token,
        }
        self.base = f"http://127.0.0.1:{port}"
        command = [*(self.run.config.get("Entrypoint") or []), *(self.run.config.get("Cmd") or [])]
        check(command, "the image has no ENTRYPOINT")
        log = open(self.run.logs / "serve.log", "wb")  # noqa: SIM115 - the daemon's, closed with it
        start = time.monotonic()
        self.daemon = subprocess.Popen(self.run.argv(command), stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() - start < READY_WITHIN_S:
            check(self.daemon.poll() is None, f"serve exited {self.daemon.returncode}:\n{self.log()}")
            try:
                status, _ = request("GET", self.base + "/v2/health/ready")
            except OSError:
                status = 0
            if status == 200:
                ready = time.monotonic() - start
                self.figures["ready_s"] = round(ready, 1)
                return f"{' '.join(command)}: /v2/health/ready 200 after {ready:.1f} s"
            time.sleep(0.25)
        raise Failed(f"/v2/health/ready not 200 within {READY_WITHIN_S:.0f} s:\n{self.log()}")

    def healthcheck(self) -> str:
        out = self.run.run(self.healthcheck_argv(), timeout=60)
        check(out.returncode == 0, f"the HEALTHCHECK command exited {out.returncode}: {out.stderr[-1000:]}")
        return "the image's HEALTHCHECK command exits 0"

    def predict(self) -> str:
        rows = [[0.1 * i + j for j in range(8)] for i in range(4)]
        status, body = request("POST", self.base + "/v1/predict", {"inputs": rows})
        check(status == 200, f"/v1/predict answered {status}: {body[:500]!r}")
        answer = json.loads(body)
        check(len(answer["predictions"]) == 4 and len(answer["probabilities"][0]) == 3, f"answer {answer}")
        check(
            answer["model_version"] == self.version, f"served {answer['model_version']}, not {self.version}"
        )
        status, body = request("POST", self.base + "/v1/predict", {"inputs": [[1.0, 2.0]]})
        check(status == 422 or 400 <= status < 500, f"a 2-feature row answered {status}")
        check("error" in json.loads(body), f"a bad row's answer has no error: {body[:300]!r}")
        return f"4 rows served by {self.version}; a bad row gets {status}"

    def admin(self) -> str:
        status, _ = request("GET", self.base + "/admin/models")
        check(status == 401, f"/admin/models without the token answered {status}")
        status, body = request("GET", self.base + "/admin/models", token=self.token)
        check(status == 200 and self.version.encode() in body, f"/admin/models answered {status}")
        return "401 without the token, 200 with it"

    def metrics(self) -> str:
        status, body = request("GET", self.base + "/metrics")
        check(status == 200, f"/metrics answered {status}")
        text = body.decode()
        model = f'watchdog_model_info{{version="{self.version}"}} 1.0'
        check(model in text, f"no `{model}` in /metrics")
        served = [
            ln for ln in text.splitlines() if ln.startswith("watchdog_requests_total{") and 'code="200"' in ln
        ]
        check(
            any(float(ln.rsplit(" ", 1)[1]) >= 1 for ln in served),
            "no 200 counted in watchdog_requests_total",
        )
        return f"{len(text.splitlines())} lines; model_info and requests_total present"

    def drain(self) -> str:
        assert self.daemon is not None
        tree = children(self.daemon.pid)
        # The daemon's own process (buildah-chroot-exec, its parent, would only be killed by it):
        # what `docker stop` signals as the container's main process.
        serving = [
            p
            for p in tree
            if "distill-watchdog serve" in cmdline(p)
            and owner(p) == 10001
            and not cmdline(p).startswith("buildah")
        ]
        check(serving, f"no `distill-watchdog serve` process of uid 10001 under buildah run ({tree})")
        main = next(p for p in serving if parent(p) not in serving)
        processes = {p: cmdline(p) for p in children(main)} | {main: cmdline(main)}
        body = json.dumps({"inputs": [[0.5] * 8]}).encode()
        conn = http.client.HTTPConnection(self.base.removeprefix("http://"), timeout=30)
        conn.putrequest("POST", "/v1/predict")
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(len(body)))
        conn.endheaders()
        conn.send(body[:10])  # in flight when SIGTERM arrives
        time.sleep(0.5)
        os.kill(main, signal.SIGTERM)
        time.sleep(1.0)
        conn.send(body[10:])
        response = conn.getresponse()
        answer = response.read()
        check(response.status == 200, f"the request in flight got {response.status}: {answer[:300]!r}")
        try:
            code = self.daemon.wait(timeout=60)
        except subprocess.TimeoutExpired as err:
            raise Failed(f"serve did not stop within 60 s of SIGTERM:\n{self.log()}") from err
        log = self.log()
        check("Application shutdown complete" in log, f"no clean shutdown in the log:\n{log}")
        left = [p for p, was in processes.items() if alive(p, was)]
        check(not left, f"processes left after the daemon stopped: {[cmdline(p) for p in left]}")
        try:
            request("GET", self.base + "/v2/health/live")
            raise Failed("the port still answers after the daemon stopped")
        except OSError:
            pass
        gone = f"{len(processes)} daemon process(es) gone"
        return f"the request in flight got 200; {gone}; buildah run exited {code}"

    def log(self) -> str:
        return (self.run.logs / "serve.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            for pid in children(self.daemon.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.daemon.kill()
            self.daemon.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/distill-watchdog:dev")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "image" / "test")
    parser.add_argument("--summary", type=Path, help="write the steps and figures here as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("image-test: run as root (buildah with the vfs driver and a chown of /data)")
    start = time.monotonic()
    with ImageRun(args.image, args.work.resolve()) as run:
        suite = Suite(run)
        steps = [
            ("runs as uid 10001", suite.user),
            ("CPU build of torch", suite.cpu_torch),
            ("runtime dependencies only", suite.runtime_only),
            ("distill --job writes the student, card, result and report", suite.distill),
            ("models register into /data", suite.register),
            ("HEALTHCHECK fails with no daemon", suite.health_fails_before_start),
            (f"serve is ready within {READY_WITHIN_S:.0f} s", suite.serve),
            ("HEALTHCHECK passes", suite.healthcheck),
            ("/v1/predict", suite.predict),
            ("admin API needs the token", suite.admin),
            ("/metrics", suite.metrics),
            ("SIGTERM drains and stops", suite.drain),
        ]
        try:
            for name, fn in steps:
                if not suite.step(name, fn):
                    break
        finally:
            suite.stop()
    passed = sum(1 for r in suite.results if r[1])
    failed = len(suite.results) - passed
    if args.summary:
        args.summary.write_text(
            json.dumps(
                {
                    "image": args.image,
                    "seconds": round(time.monotonic() - start, 1),
                    "figures": suite.figures,
                    "steps": [
                        {"name": n, "passed": p, "detail": d, "seconds": round(t, 1)}
                        for n, p, d, t in suite.results
                    ],
                },
                indent=2,
            )
        )
    print(f"image-test: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
