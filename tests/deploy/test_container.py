"""The Dockerfile, its build script and the two locks: one runtime lock for the image and the
venv, the dev lock on top for the venv only; CPU torch, non-root, health, volume, port."""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import subprocess
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .files import ROOT, docker_env, docker_json_arg, dockerfile, exposed_ports, final_stage, volumes

RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
BUILD_SCRIPT = ROOT / "deploy" / "image" / "build.sh"
# What issue 29 found in the image; test and lint tools only.
DEV_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "schemathesis", "ruff", "fastapi", "tritonclient"}


def _installs(text: str) -> list[str]:
    """Every `-r FILE` that a pip install line names."""
    return re.findall(r"pip install[^\n&;]*?-r\s+(\S+)", text)


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "-r ")):
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"{path.name}: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution that these requirements pull in, from the installed metadata (the venv
    holds exactly the two locks), extras and environment markers evaluated."""
    names: set[str] = set()
    done: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in requirements]  # (requirement, extra its marker reads)
    while todo:
        req, context = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": context}):
            continue
        name = canonicalize_name(req.name)
        names.add(name)
        for extra in {"", *req.extras}:
            if (name, extra) not in done:
                done.add((name, extra))
                todo.extend((Requirement(sub), extra) for sub in metadata.requires(name) or [])
    return names


def _own_distribution() -> str:
    return canonicalize_name(_project()["name"])


# --- the locks ------------------------------------------------------------------------------------


def test_image_and_venv_install_one_runtime_lock_and_the_venv_adds_the_dev_lock():
    run_lines = " && ".join(a for _, i, a in dockerfile() if i == "RUN")
    assert set(_installs(run_lines)) == {"requirements/runtime.txt"}
    copied = [shlex.split(a)[0] for _, i, a in dockerfile() if i == "COPY" and not a.startswith("--from")]
    assert "requirements/runtime.txt" in copied and not any("dev" in c for c in copied)
    # the Makefile's install recipe (the venv at $(BIN)); `make lock` resolves the .in files elsewhere
    venv_lines = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if "$(BIN)" in ln]
    assert set(_installs("\n".join(venv_lines))) == {"requirements/dev.txt"}
    includes = [ln for ln in DEV_LOCK.read_text().splitlines() if ln.startswith("-r ")]
    assert includes == ["-r runtime.txt"], "dev.txt must stand on the runtime lock"
    # torch's version is read from the runtime lock, not written a second time in the Dockerfile.
    assert "grep -E '^torch==' requirements/runtime.txt" in run_lines
    assert not re.search(r"torch==\d", (ROOT / "Dockerfile").read_text())
    assert _pins(RUNTIME_LOCK)["torch"] == "2.13.0"  # the CPU build on disk; looser means CUDA
    assert not set(_pins(RUNTIME_LOCK)) & set(_pins(DEV_LOCK)), "a package pinned in both locks"


def test_runtime_lock_is_the_closure_of_the_runtime_dependencies():
    runtime = set(_pins(RUNTIME_LOCK))
    closure = _closure(_project()["dependencies"]) - {_own_distribution()}
    assert closure - runtime == set(), "runtime dependencies missing from requirements/runtime.txt"
    assert runtime - closure == set(), "requirements/runtime.txt pins what no runtime dependency needs"
    assert not runtime & DEV_TOOLS
    for dep in map(Requirement, _project()["dependencies"]):
        version = _pins(RUNTIME_LOCK)[canonicalize_name(dep.name)]
        assert dep.specifier.contains(version, prereleases=True), f"{dep}: locked at {version}"


def test_dev_lock_is_the_dev_extra_on_top_of_the_runtime_lock():
    dev = set(_pins(DEV_LOCK))
    closure = _closure(_project()["optional-dependencies"]["dev"]) - set(_pins(RUNTIME_LOCK))
    assert closure == dev
    assert dev >= DEV_TOOLS


def test_runtime_code_imports_only_runtime_dependencies():
    """What watchdog/ and distill_engine/ import must come with the runtime lock (the image has
    nothing else); fastapi and tritonclient belong to the tests and benchmarks."""
    import sys

    runtime = set(_pins(RUNTIME_LOCK)) | {_own_distribution()}
    owners = metadata.packages_distributions()
    imported: dict[str, str] = {}
    for folder in ("watchdog", "distill_engine"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    imported.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    for module, where in sorted(imported.items()):
        if module in sys.stdlib_module_names or module in ("distill_watchdog", "distill_engine"):
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        assert dists, f"{where}: imports {module}, which no installed distribution provides"
        assert dists & runtime, f"{where}: imports {module} ({sorted(dists)}), not in the runtime lock"


def test_lock_recipe_resolves_the_in_files_into_the_two_locks():
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    assert "-r requirements/runtime.in" in recipe and "> requirements/runtime.txt" in recipe
    assert "-r requirements/dev.in" in recipe and "> requirements/dev.txt" in recipe
    assert "grep -vxF -f requirements/runtime.txt" in recipe  # dev.txt holds only what runtime lacks
    dev_in = (ROOT / "requirements" / "dev.in").read_text().split()
    assert "-c" in dev_in and "runtime.txt" in dev_in and ".[dev]" in dev_in  # runtime pins hold
    runtime_in = [
        ln for ln in (ROOT / "requirements" / "runtime.in").read_text().splitlines() if ln[:1] not in "#"
    ]
    assert "." in runtime_in and "torch==2.13.0" in runtime_in


# --- the Dockerfile and the build script -------------------------------------------------------------


def _args() -> dict[str, str]:
    """Every ARG of the Dockerfile with its default ('' when none)."""
    out = {}
    for _stage, instr, args in dockerfile():
        if instr == "ARG":
            name, _, default = args.partition("=")
            out.setdefault(name, default)
    return out


def test_dockerfile_takes_cpu_torch_from_a_build_argument():
    assert _args()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    run_lines = " ".join(a for _, i, a in dockerfile() if i == "RUN")
    assert '--index-url "$TORCH_INDEX_URL"' in run_lines
    assert "torch.version.cuda" in run_lines  # the build fails if a CUDA build slipped in


def test_dockerfile_base_is_a_build_argument_for_both_stages():
    assert _args()["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    froms = {stage: a.split()[0] for stage, i, a in dockerfile() if i == "FROM"}
    assert froms["build"] == froms["runtime"] == "${PYTHON_IMAGE}"
    assert froms["wheelhouse"] == "scratch"  # empty unless a build context replaces it


def test_build_script_builds_this_dockerfile_with_its_own_arguments():
    script = BUILD_SCRIPT.read_text()
    assert BUILD_SCRIPT.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(BUILD_SCRIPT)]).returncode == 0
    assert "--file Dockerfile" in script and "--isolation chroot" in script
    passed = set(re.findall(r"--build-arg (\w+)=", script))
    assert passed == {"PYTHON_IMAGE", "PIP_NO_INDEX", "PIP_FIND_LINKS"}
    assert passed <= set(_args())
    contexts = set(re.findall(r"--build-context (\w+)=", script))
    stages = {stage for stage, i, _ in dockerfile() if i == "FROM"}
    assert contexts == {"wheelhouse"} and contexts <= stages
    (mount,) = set(
        re.findall(r"--mount=type=bind,from=wheelhouse,target=(\S+)", (ROOT / "Dockerfile").read_text())
    )
    assert re.search(rf"--build-arg PIP_FIND_LINKS={re.escape(mount)}\b", script)
    assert "--format docker" in script  # OCI images drop the HEALTHCHECK


def test_dockerfile_is_multi_stage_and_the_runtime_is_not_root():
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
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "data/watchdog.db", "bench/x.py",
                     "requirements/dev.txt", "build/image/base.tar", "build/image/wheels/torch.whl",
                     "deploy/k8s/base/secret.env", "deploy/image/test.py"):  # fmt: skip
        assert _ignored(unwanted, patterns), f"{unwanted} would be sent to the build"
