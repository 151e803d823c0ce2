"""One config model: YAML + WATCHDOG__SECTION__KEY overrides; faults named by dotted key."""

from __future__ import annotations

import subprocess

import pytest

from distill_watchdog.config import load_settings
from distill_watchdog.errors import ConfigError

from support import CLI


def test_defaults_and_store_url(tmp_path):
    s = load_settings(None, data_dir=str(tmp_path))
    assert s.sampling.rate == 0.0 and s.server.port == 8080
    assert s.sampling.on_teacher_change == "quarantine" and s.alerts.min_notice_s == 60.0
    assert s.server.max_feedback_labels == 10_000 and s.distill.allowed_factories == []
    assert (s.slices.max_values_per_key, s.slices.max_slices) == (50, 200)
    assert s.store_url == f"sqlite:///{tmp_path / 'watchdog.db'}"


def test_yaml_then_env_override(tmp_path, monkeypatch, write_config):
    path = write_config({"sampling": {"rate": 0.2, "queue_size": 50}, "server": {"port": 9000}})
    monkeypatch.setenv("WATCHDOG__SAMPLING__RATE", "0.5")
    monkeypatch.setenv("WATCHDOG__SERVER__ADMIN_TOKEN", "Zq9-secret-token-value")
    s = load_settings(path)
    assert s.sampling.rate == 0.5 and s.sampling.queue_size == 50 and s.server.port == 9000
    assert s.server.admin_token.get_secret_value() == "Zq9-secret-token-value"
    assert "Zq9-secret-token-value" not in repr(s)


def test_config_env_var_names_the_file(monkeypatch, write_config):
    monkeypatch.setenv("WATCHDOG_CONFIG", str(write_config({"server": {"port": 9100}})))
    assert load_settings().server.port == 9100


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"sampling": {"rate": 1.5}}, "sampling.rate: must be within [0, 1]"),
        ({"sampling": {"per_slice": {"a": -0.1}}}, "sampling.per_slice.a: must be within [0, 1]"),
        ({"server": {"port": 70000}}, "server.port: must be within [0, 65535]"),
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"nonsense": 1}, "nonsense: unknown key"),
        ({"student": {"max_batch_size": 0}}, "student.max_batch_size: must be > 0"),
        ({"student": {"model": "a.onnx"}}, "student: model and card must be given together"),
        ({"teachers": [{"name": "t", "kind": "grpc", "location": "x"}]}, "teachers.0.kind:"),
        ({"teachers": [{"kind": "onnx", "location": "x"}]}, "teachers.0.name: Field required"),
        ({"slices": {"keys": ["a=b"]}}, "slices.keys.0: must be non-empty, without '=' or ','"),
        ({"slices": {"keys": ["a,b"]}}, "slices.keys.0: must be non-empty, without '=' or ','"),
        (
            {"slices": {"bins": [{"name": "age", "feature": 0, "edges": [1], "labels": ["a,b", "c"]}]}},
            "slices.bins.0.labels.0: must not contain ','",
        ),
        ({"slices": {"max_values_per_key": 0}}, "slices.max_values_per_key: must be > 0"),
        ({"alerts": {"min_notice_s": -1}}, "alerts.min_notice_s: must be >= 0"),
        ({"sampling": {"on_teacher_change": "auto"}}, "sampling.on_teacher_change: Input should be"),
    ],
)
def test_each_bad_key_is_named(write_config, data, line):
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(data))
    assert any(entry.startswith(line) for entry in err.value.lines), err.value.lines


def test_check_config_cli(write_config, tmp_path):
    good = write_config({"sampling": {"rate": 0.1}})
    out = subprocess.run([CLI, "check-config", str(good)], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout
    bad = write_config({"sampling": {"rate": 2}, "server": {"port": -1, "bogus": 1}}, name="bad.yaml")
    out = subprocess.run([CLI, "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert "sampling.rate: must be within [0, 1]" in lines
    assert "server.port: must be within [0, 65535]" in lines
    assert "server.bogus: unknown key" in lines
    assert "Traceback" not in out.stderr
    (tmp_path / "broken.yaml").write_text("server: [\n")
    out = subprocess.run([CLI, "check-config", str(tmp_path / "broken.yaml")], capture_output=True, text=True)
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    out = subprocess.run(
        [CLI, "check-config", str(tmp_path / "missing.yaml")], capture_output=True, text=True
    )
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_check_config_validates_teacher_adapter_options(write_config):
    bad = write_config(
        {
            "teachers": [
                {"name": "big", "kind": "http-v2", "location": "http://127.0.0.1:1", "options": {"bogus": 1}}
            ]
        }
    )
    out = subprocess.run([CLI, "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == "teachers.big.options.bogus: unknown key\n"


def test_gil_switch_interval_is_a_checked_server_setting():
    from distill_watchdog.config import Settings

    assert Settings().server.gil_switch_interval_ms == 0.5
    with pytest.raises(ValueError, match="gil_switch_interval_ms"):
        Settings.model_validate({"server": {"gil_switch_interval_ms": 0}})
