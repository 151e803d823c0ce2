"""Test helpers shared by every suite: small real ONNX models, real servers on loopback, PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "distill-watchdog")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- ONNX models --------------------------------------------------------------------------


def mlp_weights(num_features: int, num_classes: int, hidden: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0, 1 / np.sqrt(num_features), (num_features, hidden)).astype(np.float32),
        rng.normal(0, 0.1, hidden).astype(np.float32),
        rng.normal(0, 1 / np.sqrt(hidden), (hidden, num_classes)).astype(np.float32),
        rng.normal(0, 0.1, num_classes).astype(np.float32),
    ]


def mlp_reference(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """The logits the ONNX graph must produce (numpy reference)."""
    w1, b1, w2, b2 = weights
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


def mlp_onnx_bytes(
    num_features: int = 40,
    num_classes: int = 10,
    hidden: int = 16,
    seed: int = 0,
    input_name: str = "x",
    output_name: str = "logits",
    softmax: bool = False,
    fixed_batch: int | None = None,
) -> bytes:
    """A two-layer MLP graph built with onnx.helper (fast, no torch), dynamic batch axis."""
    w1, b1, w2, b2 = mlp_weights(num_features, num_classes, hidden, seed)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["logits_raw" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits_raw"], [output_name], axis=1))
    batch: Any = fixed_batch if fixed_batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, num_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, num_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def card_for(num_features: int = 40, num_classes: int = 10, **extra: Any) -> dict[str, Any]:
    card = {
        "name": "test-mlp",
        "input_name": "x",
        "output_name": "logits",
        "num_features": num_features,
        "classes": list(range(num_classes)),
        "output_kind": "logits",
        "temperature": 1.0,
    }
    card.update(extra)
    return card


def write_model(
    folder: Path,
    stem: str = "student",
    seed: int = 0,
    num_features: int = 40,
    num_classes: int = 10,
    card_extra: dict[str, Any] | None = None,
    **onnx_kw: Any,
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    model_path, card_path = folder / f"{stem}.onnx", folder / f"{stem}.card.json"
    model_path.write_bytes(mlp_onnx_bytes(num_features, num_classes, seed=seed, **onnx_kw))
    card = card_for(num_features, num_classes)
    card.update(card_extra or {})
    card_path.write_text(json.dumps(card))
    return model_path, card_path


# --- PostgreSQL -----------------------------------------------------------------------------


class Postgres:
    """Hands out a fresh database per test on a server from the env URL or a throw-away cluster."""

    def __init__(self, own_cluster: bool = False) -> None:
        """`own_cluster` starts a private cluster even when the env URL is set (tests that restart it)."""
        self.base_url: str | None = None if own_cluster else os.environ.get("WATCHDOG_TEST_POSTGRES_URL")
        self.skip_reason: str | None = None
        self._cluster: Path | None = None
        if not self.base_url:
            self._start_cluster()

    def restart(self, pause_s: float = 0.0) -> None:
        """Stops the private cluster (fast mode: connections are cut), waits, starts it again."""
        assert self._cluster is not None, "restart needs own_cluster=True"
        pg_ctl = [*self._as, str(_pg_bindir() / "pg_ctl"), "-D", str(self._cluster / "data")]
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
        time.sleep(pause_s)
        subprocess.run(
            [*pg_ctl, "-l", str(self._cluster / "log"), "-w", "start"], check=True, capture_output=True
        )

    def _start_cluster(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            self.skip_reason = "PostgreSQL: WATCHDOG_TEST_POSTGRES_URL unset and no initdb/pg_ctl found"
            return
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            if (
                shutil.which("runuser") is None
                or subprocess.run(["id", "postgres"], capture_output=True).returncode
            ):
                self.skip_reason = "PostgreSQL: URL unset, running as root and no 'postgres' user for initdb"
                return
            self._as = ["runuser", "-u", "postgres", "--"]
        self._cluster = Path(tempfile.mkdtemp(prefix="wd-pg-"))
        if self._as:
            shutil.chown(self._cluster, "postgres")
        port = free_port()
        try:
            subprocess.run(
                [
                    *self._as,
                    str(bindir / "initdb"),
                    "-D",
                    str(self._cluster / "data"),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                ],
                check=True,
                capture_output=True,
            )
            with open(self._cluster / "data" / "postgresql.conf", "a") as conf:
                conf.write(f"\nport = {port}\nunix_socket_directories = '{self._cluster}'\n")
                conf.write("listen_addresses = '127.0.0.1'\nfsync = off\n")
            subprocess.run(
                [*self._as, str(bindir / "pg_ctl"), "-D", str(self._cluster / "data"), "-l",
                 str(self._cluster / "log"), "-w", "start"],
                check=True,
                capture_output=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            self.skip_reason = (
                f"PostgreSQL: throw-away cluster failed to start ({exc.stderr.decode()[-200:]})"
            )
            return
        self.base_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def create_database(self) -> str:
        import psycopg

        assert self.base_url
        name = f"wd_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.base_url.rsplit("/", 1)[0] + f"/{name}"

    def drop_database(self, url: str) -> None:
        import psycopg

        assert self.base_url
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(Exception), psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self._cluster is not None:
            bindir = _pg_bindir()
            subprocess.run(
                [
                    *self._as,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self._cluster / "data"),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
            )
            shutil.rmtree(self._cluster, ignore_errors=True)


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


# --- servers --------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """The process's children, theirs, and so on (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    out: list[int] = []
    for child in children.read_text().split() if children.exists() else []:
        out += [int(child), *descendants(int(child))]
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has ended)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Polls until `check()` is truthy (background work finishes on its own schedule)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.05)


def wait_ready(url: str, timeout: float = 30.0, path: str = "/v2/health/ready") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url}{path} not ready after {timeout}s ({last})")


class ServerThread:
    """The real daemon app under uvicorn, in this process, on a loopback port."""

    def __init__(self, settings: Any, components: list[Any] | None = None) -> None:
        import uvicorn

        from distill_watchdog.app import create_app

        self.port = settings.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings, components=components)
        self.daemon = self.app.daemon
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                lifespan="on",
                timeout_graceful_shutdown=10,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        # Generous: start-up spawns teacher and shadow processes, slow on a loaded 2-CPU runner.
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server did not start: its thread ended (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 120 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class DaemonProcess:
    """`distill-watchdog serve` as a child process (for signals, restarts and kill -9)."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.config_path = config_path
        self.env = {**os.environ, "DO_NOT_TRACK": "1", **(env or {})}
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.with_suffix(f".{uuid.uuid4().hex[:6]}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> DaemonProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [CLI, "serve", "--config", str(self.config_path)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            try:
                wait_ready(self.url, timeout=60)
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"daemon did not start:\n{self.log()[-3000:]}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- rows in the store: written and read directly, beside the daemon's own paths -----------------


@dataclass(slots=True)
class SampleRecord:
    """A sampled row with its teachers' answers, for `add_samples`."""

    id: str
    request_id: str
    at: float
    features: Any
    student_probs: Any
    student_version: str
    slices: dict[str, str]
    quarantined: bool
    # teacher name -> (version, probs or None when the teacher failed, quarantined)
    teachers: dict[str, tuple[str, Any, bool]]


def _dumps(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def add_samples(store: Any, records: list[SampleRecord]) -> int:
    """Inserts rows built one by one, in one transaction; the store assigns their keys (each
    record's `id` only ties its teachers' answers to it here)."""
    from distill_watchdog.store.rows import SAMPLE_COLUMNS, insert_rows
    from distill_watchdog.store.vectors import to_blob

    samples = [
        (
            r.request_id,
            r.at,
            to_blob(r.features),
            to_blob(r.student_probs),
            r.student_version,
            _dumps(r.slices),
            r.quarantined,
        )
        for r in records
    ]
    outputs = [
        (j, name, version, None if probs is None else to_blob(probs), quarantined)
        for j, r in enumerate(records)
        for name, (version, probs, quarantined) in r.teachers.items()
    ]

    def op(session: Any) -> int:
        return len(insert_rows(session.connection(), SAMPLE_COLUMNS, samples, outputs))

    return store.db.retry("add_samples", op)


def text_keyed_tables(vectors: str) -> Any:
    """The sampled-row tables (SQLAlchemy metadata) as builds before integer keys created them:
    32-character text row ids, vectors as JSON text (`"json"`, schema version 1, with the eval
    set's table) or float32 bytes (`"bytes"`, version 2)."""
    import sqlalchemy as sa

    vector = sa.String if vectors == "json" else sa.LargeBinary
    suffix = "_json" if vectors == "json" else ""
    meta = sa.MetaData()
    sa.Table(
        "samples",
        meta,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False, index=True),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column(f"features{suffix}", vector, nullable=False),
        sa.Column(f"student_probs{suffix}", vector, nullable=False),
        sa.Column("student_version", sa.String(64), nullable=False),
        sa.Column("slice_json", sa.String, nullable=False),
        sa.Column("quarantined", sa.Boolean, nullable=False, index=True),
        sa.Column("label", sa.Integer),
        sa.Column("labelled_at", sa.Float),
    )
    sa.Table(
        "teacher_outputs",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sample_id", sa.String(32), nullable=False, index=True),
        sa.Column("teacher", sa.String(200), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column(f"probs{suffix}", vector),
        sa.Column("quarantined", sa.Boolean, nullable=False),
    )
    if vectors == "json":
        sa.Table(
            "eval_rows",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("teacher", sa.String(200), nullable=False, index=True),
            sa.Column("ordinal", sa.Integer, nullable=False),
            sa.Column("features_json", sa.String, nullable=False),
            sa.Column("label", sa.Integer),
            sa.Column("slice", sa.String(200), nullable=False),
            sa.Column("probs_json", sa.String, nullable=False),
            sa.Column("version", sa.String(200), nullable=False),
            sa.Column("source", sa.String(16), nullable=False),
        )
    sa.Table(
        "schema_info", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("version", sa.Integer)
    )
    return meta


def interrupt_upgrade(url: str, upgrade: Callable[..., bool], batches: int, *queries: str) -> list[Any]:
    """Runs a schema upgrade for `batches` batches only, as a process stopped part-way would,
    then returns each query's single value."""
    from sqlalchemy import text

    from distill_watchdog.store.db import make_engine

    engine = make_engine(url)
    try:
        assert upgrade(engine, stop_after=batches) is False  # stopped part-way
        with engine.connect() as conn:
            return [conn.execute(text(q)).scalar() for q in queries]
    finally:
        engine.dispose()


def recent_samples(store: Any, limit: int = 1000) -> list[dict[str, Any]]:
    """The newest unquarantined rows, newest first, each with its teachers' outputs."""
    import orjson
    from sqlalchemy import select

    from distill_watchdog.store.tables import Sample, TeacherOutput
    from distill_watchdog.store.vectors import from_blob

    s, t = Sample.__table__.c, TeacherOutput.__table__.c

    def op(session: Any) -> list[dict[str, Any]]:
        query = (
            select(Sample.__table__)
            .where(s.quarantined.is_(False))
            .order_by(s.at.desc(), s.id.desc())
            .limit(limit)
        )
        rows = {
            row.id: {
                "id": row.id,
                "request_id": row.request_id,
                "at": row.at,
                "features": from_blob(row.features).tolist(),
                "student_probs": from_blob(row.student_probs).tolist(),
                "student_version": row.student_version,
                "slices": orjson.loads(row.slice_json),
                "quarantined": bool(row.quarantined),
                "label": row.label,
                "teachers": {},
            }
            for row in session.execute(query).all()
        }
        ids = list(rows)
        for start in range(0, len(ids), 500):
            chunk = select(TeacherOutput.__table__).where(t.sample_id.in_(ids[start : start + 500]))
            for out in session.execute(chunk).all():
                rows[out.sample_id]["teachers"][out.teacher] = {
                    "version": out.version,
                    "quarantined": bool(out.quarantined),
                    "probs": None if out.probs is None else from_blob(out.probs).tolist(),
                }
        return list(rows.values())

    return store.db.retry("recent_samples", op)


def get_pin(store: Any, teacher: str) -> Any:
    """The stored pin of `teacher` (a TeacherPin), or None."""
    return {pin.teacher: pin for pin in store.list_pins()}.get(teacher)


def sample_columns(store: Any, limit: int, since: float | None = None) -> Any:
    """The newest `limit` unquarantined rows in one SampleColumns (the monitor reads chunks)."""
    from distill_watchdog.store import SampleColumns

    out = SampleColumns()
    for cols in store.sample_chunks(limit, since):
        for name in SampleColumns.__dataclass_fields__:
            getattr(out, name).extend(getattr(cols, name))
    return out
