"""`distill-watchdog models ...` against a real store; user errors are one line, no traceback."""

from __future__ import annotations

import json
import subprocess

from support import CLI


def run(*args: str, config) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args, "--config", str(config)], capture_output=True, text=True, timeout=120)


def test_register_list_activate_rollback(write_config, model_files, store_url, tmp_path):
    config = write_config({"data_dir": str(tmp_path / "data"), "store": {"url": store_url}})
    m1, c1 = model_files("a", seed=1)
    m2, c2 = model_files("b", seed=2)
    out = run("models", "register", str(m1), "--card", str(c1), "--activate", config=config)
    assert out.returncode == 0, out.stderr
    v1 = out.stdout.strip()
    assert len(v1) == 16
    again = run("models", "register", str(m1), "--card", str(c1), config=config)
    assert again.stdout.strip() == v1  # idempotent by content
    v2 = run("models", "register", str(m2), "--card", str(c2), config=config).stdout.strip()
    listing = run("models", "list", config=config).stdout
    assert f"* {v1}" in listing and f"  {v2}" in listing
    assert run("models", "activate", v2, config=config).returncode == 0
    data = json.loads(run("models", "list", "--json", config=config).stdout)
    assert [m["version"] for m in data if m["active"]] == [v2]
    out = run("models", "rollback", config=config)
    assert out.returncode == 0 and v1 in out.stdout
    out = run("models", "rollback", config=config)
    assert (
        out.returncode == 1
        and out.stderr.strip() == "error: rollback: no earlier active version to return to"
    )


def test_bad_registrations_are_one_line_errors(write_config, model_files, tmp_path):
    config = write_config({"data_dir": str(tmp_path / "data")})
    model, card = model_files(num_features=39, card_extra={"num_features": 40})
    out = run("models", "register", str(model), "--card", str(card), config=config)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: card.num_features: card says 40, model input has 39"
    out = run("models", "register", str(tmp_path / "none.onnx"), "--card", str(card), config=config)
    assert out.returncode == 1 and "cannot read" in out.stderr and "Traceback" not in out.stderr
    bad_card = tmp_path / "bad.json"
    bad_card.write_text("{")
    good_model, _ = model_files("g")
    out = run("models", "register", str(good_model), "--card", str(bad_card), config=config)
    assert out.returncode == 1 and "not valid JSON" in out.stderr
    out = run("models", "activate", "nothex", config=config)
    assert out.returncode == 1 and "not a version id" in out.stderr
    assert run("models", "list", config=config).stdout.strip() == ""
