"""The Dockerfile and .dockerignore: one pinned list, CPU torch, non-root, health, volume, port."""

from __future__ import annotations

import fnmatch
import re
import shlex

from .files import ROOT, docker_env, docker_json_arg, dockerfile, exposed_ports, final_stage, volumes


def _installs(text: str) -> list[str]:
    """Every `-r FILE` that a pip install line names."""
    return re.findall(r"pip install[^\n&;]*?-r\s+(\S+)", text)


def test_dockerfile_and_makefile_install_the_same_pinned_list():
    run_lines = " && ".join(a for _, i, a in dockerfile() if i == "RUN")
    docker_lists = set(_installs(run_lines))
    # the Makefile's install recipe (the venv at $(BIN)); `make lock` resolves requirements.in elsewhere
    venv_lines = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if "$(BIN)" in ln]
    make_lists = set(_installs("\n".join(venv_lines)))
    assert docker_lists == make_lists == {"requirements.txt"}
    copied = [a for _, i, a in dockerfile() if i == "COPY"]
    assert any(shlex.split(c)[0] == "requirements.txt" for c in copied), "requirements.txt is not copied in"
    # torch's version is read from that list, not written a second time in the Dockerfile.
    assert "grep -E '^torch==' requirements.txt" in run_lines
    assert not re.search(r"torch==\d", (ROOT / "Dockerfile").read_text())
    pins = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==\S+$", pins, re.M), "requirements.txt has no exact torch pin"


def test_dockerfile_takes_cpu_torch():
    run_lines = " ".join(a for _, i, a in dockerfile() if i == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in run_lines
    assert "torch.version.cuda" in run_lines  # the build fails if a CUDA build slipped in


def test_dockerfile_is_multi_stage_and_the_runtime_is_not_root():
    froms = [a for _, i, a in dockerfile() if i == "FROM"]
    assert len(froms) >= 2
    runtime = final_stage()
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in runtime)
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # no pip, no compiler step in the runtime stage: it only copies the venv
    assert not any(i == "RUN" and "pip install" in a for i, a in runtime)


def test_dockerfile_runs_the_daemon_with_health_volume_and_port():
    env = docker_env()
    assert env["DO_NOT_TRACK"] == "1"
    assert docker_json_arg("ENTRYPOINT") == ["distill-watchdog", "serve"]
    assert volumes() == {env["WATCHDOG__DATA_DIR"]}
    assert exposed_ports() == {int(env["WATCHDOG__SERVER__PORT"])}
    assert env["WATCHDOG__SERVER__HOST"] == "0.0.0.0"
    health = [a for i, a in final_stage() if i == "HEALTHCHECK"]
    assert len(health) == 1 and "/v2/health/ready" in health[0]
    assert "CMD" in health[0] and "python" in health[0]  # python is in the image; curl is not


def test_image_default_config_is_valid_in_the_image_environment(monkeypatch):
    from distill_watchdog.config import load_settings

    env = docker_env()
    copied = [shlex.split(a) for i, a in final_stage() if i == "COPY" and not a.startswith("--from")]
    targets = {dst: src for src, dst in copied}
    src = targets[env["WATCHDOG_CONFIG"]]
    for key, value in env.items():
        if key.startswith("WATCHDOG__"):
            monkeypatch.setenv(key, value)
    settings = load_settings(ROOT / src)
    assert str(settings.data_dir) in volumes()
    assert settings.server.port in exposed_ports()


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics enough for our file: last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat == "**" or any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for _stage, instr, args in dockerfile():
        if instr != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing in the repository"
            assert not _ignored(src.rstrip("/"), patterns), f"COPY {src}: excluded by .dockerignore"
            if (ROOT / src).is_dir():
                for f in (ROOT / src).rglob("*.py"):
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" not in rel:
                        assert not _ignored(rel, patterns), f"{rel}: excluded by .dockerignore"
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "data/watchdog.db", "bench/x.py"):
        assert _ignored(unwanted, patterns), f"{unwanted} would be sent to the build"
