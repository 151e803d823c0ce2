"""Compose and Kubernetes files parse, and every image, port, path, variable and key they name
agrees with the Dockerfile, the config model and each other (no container engine runs here)."""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from .files import (
    COMPOSE,
    DEPLOY,
    DOCS,
    K8S,
    PROMETHEUS,
    ROOT,
    SCRAPE_JOB,
    compose,
    docker_env,
    exposed_ports,
    k8s_find,
    k8s_objects,
    load_all_yaml,
    load_yaml,
    settings_key_exists,
    volumes,
)

IMAGE = "distill-watchdog"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PORT = next(iter(exposed_ports()))
DATA_DIR = next(iter(volumes()))
JOB_PLACEHOLDERS = {"RUN_ID": "r20260101", "JOB_FILE": "/data/jobs/r1/job.yaml", "OUT_DIR": "/data/runs/r1"}


def _interpolate(value: str) -> str:
    """Compose variable syntax: ${X:-default} takes the default, ${X:?message} a stand-in, ${X} ''."""

    def sub(match: re.Match[str]) -> str:
        body = match.group(1)
        if ":-" in body:
            return body.split(":-", 1)[1]
        if ":?" in body:
            return "stand-in-" + body.split(":?", 1)[0].lower()
        return ""

    return re.sub(r"\$\{([^}]*)\}", sub, value)


def _daemon_services() -> dict[str, dict]:
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("image", "").startswith(IMAGE + ":")
    }


def _http_paths() -> set[str]:
    from distill_watchdog.serving.endpoints import ENDPOINTS

    return {e.path for e in ENDPOINTS}


def _load_with_env(monkeypatch: pytest.MonkeyPatch, config: Path, env: dict[str, str]):
    from distill_watchdog.config import load_settings

    for key in [k for k in __import__("os").environ if k.startswith("WATCHDOG__")]:
        monkeypatch.delenv(key)
    for key, value in {**docker_env(), **env}.items():
        if key.startswith("WATCHDOG__"):
            monkeypatch.setenv(key, value)
    return load_settings(config)


# --- compose --------------------------------------------------------------------------------------


def test_compose_has_the_daemon_observers_and_a_postgres_profile():
    services = compose()["services"]
    for name in ("watchdog", "prometheus", "alertmanager", "grafana"):
        assert name in services and "profiles" not in services[name], name
    replicas = [n for n, s in _daemon_services().items() if "postgres" in s.get("profiles", [])]
    assert len(replicas) == 2
    assert services["postgres"]["profiles"] == ["postgres"]
    for name in replicas:
        assert "postgres" in services[name]["depends_on"]


def test_compose_daemons_use_the_image_port_volume_and_valid_configs(monkeypatch):
    services = _daemon_services()
    assert set(services) >= {"watchdog"}
    for name, svc in services.items():
        assert svc["image"] == f"{IMAGE}:{VERSION}", name
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert (COMPOSE.parent / svc["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
        container_ports = {int(p.split(":")[-1]) for p in svc["ports"]}
        assert container_ports == {PORT}, name
        mounts = {}
        for volume in svc["volumes"]:
            src, dst = volume.split(":")[:2]
            mounts[dst] = src
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: {src} does not exist"
        assert DATA_DIR in mounts, f"{name}: data_dir {DATA_DIR} is not a volume"
        config_in_container = svc["command"][svc["command"].index("--config") + 1]
        config = COMPOSE.parent / mounts[config_in_container]
        env = {k: _interpolate(str(v)) for k, v in svc.get("environment", {}).items()}
        for key in env:
            if key.startswith("WATCHDOG__"):
                dotted = key[len("WATCHDOG__") :].lower().split("__")
                assert settings_key_exists(dotted), f"{name}: {key} is not a config key"
        settings = _load_with_env(monkeypatch, config, env)
        assert settings.server.port == PORT and str(settings.data_dir) == DATA_DIR
        assert settings.server.host == "0.0.0.0"
        assert settings.server.admin_token is not None, f"{name}: no admin token"
        if "postgres" in svc.get("profiles", []):
            assert settings.store_url.startswith("postgresql://"), name
            assert "@postgres:5432/" in settings.store_url
        else:
            assert settings.store_url.startswith(f"sqlite:///{DATA_DIR}/")
        if settings.alerts.alertmanager_url:
            assert settings.alerts.alertmanager_url == "http://alertmanager:9093"


def test_compose_replicas_share_one_data_volume_and_one_database():
    services = _daemon_services()
    replicas = [s for s in services.values() if "postgres" in s.get("profiles", [])]
    data = {next(v.split(":")[0] for v in s["volumes"] if v.split(":")[1] == DATA_DIR) for s in replicas}
    urls = {s["environment"]["WATCHDOG__STORE__URL"] for s in replicas}
    assert len(data) == 1 and len(urls) == 1
    assert data.pop() in compose()["volumes"]
    host_ports = [p.split(":")[0] for s in services.values() for p in s["ports"]]
    assert len(host_ports) == len(set(host_ports))
    pg_env = compose()["services"]["postgres"]["environment"]
    url = _interpolate(urls.pop())
    assert url == (f"postgresql://{pg_env['POSTGRES_USER']}:{_interpolate(pg_env['POSTGRES_PASSWORD'])}"
                   f"@postgres:5432/{pg_env['POSTGRES_DB']}")  # fmt: skip


def test_compose_observers_mount_existing_files_and_prometheus_finds_every_daemon():
    services = compose()["services"]
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in services[name]["volumes"]:
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: {src}"
    prom = services["prometheus"]
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    config_path = config_flag.split("=", 1)[1]
    assert (COMPOSE.parent / mounted[config_path]).resolve() == (PROMETHEUS / "prometheus.yml").resolve()
    prom_config = load_yaml(PROMETHEUS / "prometheus.yml")
    for pattern in prom_config["rule_files"]:
        assert (Path(config_path).parent / pattern).parent.as_posix() in mounted
    jobs = {j["job_name"]: j for j in prom_config["scrape_configs"]}
    sd = jobs[SCRAPE_JOB]["dns_sd_configs"][0]
    assert sd["port"] == PORT and set(sd["names"]) == set(_daemon_services())
    am_targets = prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_targets == ["alertmanager:9093"] and "alertmanager" in services
    assert any(p == "9093:9093" for p in services["alertmanager"]["ports"])


# --- Kubernetes -----------------------------------------------------------------------------------


def test_k8s_manifests_parse_and_name_a_kind():
    objects = k8s_objects()
    assert objects
    for path, obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), path
    kinds = {o["kind"] for _, o in objects}
    assert kinds >= {
        "Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "ServiceMonitor",
        "PodDisruptionBudget", "Job", "PrometheusRule",
    }  # fmt: skip
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in load_yaml(kustomization)["resources"]:
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"


def _pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"]["labels"]


def test_k8s_deployment_agrees_with_the_image_config_secret_and_volume(monkeypatch, tmp_path):
    (deploy,) = k8s_find("Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= _pod_labels(deploy).items()
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{IMAGE}:{VERSION}"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    paths = _http_paths()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths and get["port"] in ports, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    from distill_watchdog.config import ServerConfig

    assert pod["terminationGracePeriodSeconds"] > ServerConfig().drain_timeout_s

    volumes_by_name = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes_by_name[m["name"]] for m in container["volumeMounts"]}
    (pvc,) = k8s_find("PersistentVolumeClaim")
    assert mounts[DATA_DIR]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # replicas share models/ in data_dir

    # the config file: the ConfigMap key mounted where the args point
    config_path = container["args"][container["args"].index("--config") + 1]
    config_dir, config_name = config_path.rsplit("/", 1)
    (configmap,) = k8s_find("ConfigMap", mounts[config_dir]["configMap"]["name"])
    config_file = tmp_path / config_name
    config_file.write_text(configmap["data"][config_name])

    (generator,) = load_yaml(K8S / "base" / "kustomization.yaml")["secretGenerator"]
    secret = _documented_secret_env(tmp_path)  # what a user's secret.env holds
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == generator["name"]
            assert ref["key"] in secret, ref["key"]
            env[item["name"]] = secret[ref["key"]]
        else:
            env[item["name"]] = item["value"]
        if item["name"].startswith("WATCHDOG__"):
            assert settings_key_exists(item["name"][len("WATCHDOG__") :].lower().split("__")), item["name"]
    settings = _load_with_env(monkeypatch, config_file, env)
    assert settings.server.port == PORT and str(settings.data_dir) == DATA_DIR
    assert settings.store_url.startswith("postgresql://")
    assert settings.server.admin_token is not None and len(settings.server.admin_token) >= 16


# --- the Kubernetes Secret: generated from a file the user writes, never in the repository -------

SECRET_ENV = K8S / "base" / "secret.env"
# The two-line `printf 'admin-token=...' ... > deploy/k8s/base/secret.env` of the docs.
_SECRET_COMMAND = re.compile(
    r"^[ \t]*(printf 'admin-token=[^\n]*\\\n[^\n]*> deploy/k8s/base/secret\.env)$", re.M
)


def _documented_secret_env(tmp_path: Path) -> dict[str, str]:
    """Runs the command docs/deploy.md gives for secret.env (in a scratch copy of the tree) and
    returns what it wrote."""
    (command,) = _SECRET_COMMAND.findall(DOCS.read_text())
    (tmp_path / "deploy" / "k8s" / "base").mkdir(parents=True, exist_ok=True)
    subprocess.run(["sh", "-c", command], cwd=tmp_path, check=True, timeout=30)
    lines = (tmp_path / "deploy" / "k8s" / "base" / "secret.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


def test_k8s_secrets_come_from_a_git_ignored_file_the_user_writes(tmp_path):
    assert k8s_find("Secret") == [], "a Secret in the manifests is applied with whatever it holds"
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".sh", ".env"):
            assert "change-me" not in path.read_text(), f"{path}: a placeholder secret"
    (generator,) = load_yaml(K8S / "base" / "kustomization.yaml")["secretGenerator"]
    assert set(generator) <= {"name", "type", "envs", "options"}, "literals or files would be committed"
    assert generator["envs"] == [SECRET_ENV.name]
    if (ROOT / ".git").exists():
        rel = SECRET_ENV.relative_to(ROOT).as_posix()
        assert subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT).returncode == 0, (
            f"{rel} not ignored"
        )
        tracked = subprocess.run(["git", "ls-files", rel], cwd=ROOT, capture_output=True, text=True).stdout
        assert not tracked.strip(), f"{rel} is committed"
    # docs/deploy.md and the kustomization's own comment give the same command, and it writes a
    # random admin token long enough for the daemon and a PostgreSQL store URL.
    (in_kustomization,) = _SECRET_COMMAND.findall(
        "\n".join(
            ln.removeprefix("#").strip()
            for ln in (K8S / "base" / "kustomization.yaml").read_text().splitlines()
        )
    )
    assert re.sub(r"\s+", " ", in_kustomization) == re.sub(
        r"\s+", " ", _SECRET_COMMAND.findall(DOCS.read_text())[0]
    )
    first, second = _documented_secret_env(tmp_path / "a"), _documented_secret_env(tmp_path / "b")
    assert set(first) == {"admin-token", "store-url"}
    assert len(first["admin-token"]) >= 16 and first["admin-token"] != second["admin-token"]
    assert first["store-url"].startswith("postgresql://")


def test_k8s_service_monitor_and_pdb_select_the_daemon_pods():
    (deploy,) = k8s_find("Deployment")
    labels = _pod_labels(deploy)
    (service,) = k8s_find("Service", SCRAPE_JOB)  # the Service name is the scrape job label
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT and port["targetPort"] == "http"
    (monitor,) = k8s_find("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    (pdb,) = k8s_find("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deploy["spec"]["replicas"]


def _render_job(path: Path) -> list[dict]:
    text = path.read_text()
    assert set(re.findall(r"\$\{([A-Z_]+)\}", text)) <= set(JOB_PLACEHOLDERS), path
    for key, value in JOB_PLACEHOLDERS.items():
        text = text.replace("${" + key + "}", value)
    return [d for d in yaml.safe_load_all(text) if d]


def test_k8s_distill_job_runs_the_cli_on_the_same_image_and_volume():
    (job,) = _render_job(K8S / "jobs" / "distill-job.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{IMAGE}:{VERSION}"
    argv = container["command"] + container["args"]
    assert argv[:2] == ["distill-watchdog", "distill"]
    assert argv[argv.index("--job") + 1] == JOB_PLACEHOLDERS["JOB_FILE"]
    assert argv[argv.index("--out") + 1] == JOB_PLACEHOLDERS["OUT_DIR"]
    _assert_on_shared_volume(job)
    # the CLI really has these options
    from typer.main import get_command

    from distill_watchdog.cli import app

    distill = get_command(app).commands["distill"]  # type: ignore[attr-defined]
    options = {opt for param in distill.params for opt in param.opts}
    assert {"--job", "--out"} <= options


def _assert_on_shared_volume(job: dict) -> None:
    pod = job["spec"]["template"]["spec"]
    (pvc,) = k8s_find("PersistentVolumeClaim")
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert claims[mounts[DATA_DIR]] == pvc["metadata"]["name"]
    for path in (JOB_PLACEHOLDERS["JOB_FILE"], JOB_PLACEHOLDERS["OUT_DIR"]):
        assert path.startswith(DATA_DIR + "/")


def test_k8s_torchrun_job_gives_each_pod_its_node_rank():
    docs = _render_job(K8S / "jobs" / "distill-job-torchrun.yaml")
    service = next(d for d in docs if d["kind"] == "Service")
    job = next(d for d in docs if d["kind"] == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    assert container["image"] == f"{IMAGE}:{VERSION}"
    script = " ".join(container["args"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["NNODES"]) == spec["completions"]
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    for flag, var in (("--nnodes", "NNODES"), ("--nproc-per-node", "NPROC_PER_NODE"),
                      ("--node-rank", "JOB_COMPLETION_INDEX"), ("--master-addr", "MASTER_ADDR"),
                      ("--master-port", "MASTER_PORT")):  # fmt: skip
        assert f'{flag}="${var}"' in script, flag
    assert "torchrun" in script and "-m distill_engine" in script
    assert '--job "$JOB_FILE"' in script and '--out "$OUT_DIR"' in script
    assert int(env["MASTER_PORT"]) == service["spec"]["ports"][0]["port"]
    _assert_on_shared_volume(job)


def test_submit_script_is_valid_shell():
    script = K8S / "jobs" / "submit-distill-job.sh"
    assert script.stat().st_mode & 0o111, "submit-distill-job.sh must be executable"
    out = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize render)")
def test_kustomize_renders_base_and_monitoring_with_the_users_secret_only(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(K8S, tree / "deploy" / "k8s", ignore=shutil.ignore_patterns(SECRET_ENV.name))

    def render(folder: str) -> subprocess.CompletedProcess:
        where = tree / "deploy" / "k8s" / folder
        return subprocess.run(
            ["kubectl", "kustomize", str(where)], capture_output=True, text=True, timeout=60
        )

    # Without the user's secret.env nothing renders, so nothing with a placeholder is applied.
    for folder in ("base", "monitoring"):
        out = render(folder)
        assert out.returncode != 0 and "secret.env" in out.stderr, out.stdout[:500]
    secret = _documented_secret_env(tree)
    for folder in ("base", "monitoring"):
        out = render(folder)
        assert out.returncode == 0, out.stderr
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "Service", "PodDisruptionBudget", "Secret"} <= kinds
        if folder == "monitoring":
            assert {"ServiceMonitor", "PrometheusRule"} <= kinds
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "distill-watchdog"
        (rendered,) = [d for d in docs if d["kind"] == "Secret"]
        values = {k: base64.b64decode(v).decode() for k, v in rendered["data"].items()}
        assert values == secret
        (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
        refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in deploy["spec"]["template"]["spec"]["containers"]
            for e in c["env"]
            if "valueFrom" in e
        }
        assert refs == {rendered["metadata"]["name"]}  # the hashed name: a new secret rolls the pods


def test_every_compose_and_k8s_file_is_yaml():
    for path in [*K8S.rglob("*.yaml"), *COMPOSE.parent.rglob("*.yaml"), *COMPOSE.parent.rglob("*.yml")]:
        text = path.read_text()
        if "${RUN_ID}" in text:
            continue  # templates: parsed after filling in test_k8s_*_job_*
        assert load_all_yaml(path) is not None, path


def test_documented_command_launcher_runs_the_submit_script_shipped_in_the_image():
    from .files import DOCS, final_stage

    docs = DOCS.read_text()
    (template,) = set(re.findall(r'^\s*command: "(\S*submit-distill-job\.sh[^"]*)"', docs, re.M))
    argv = shlex.split(template.format(job="/data/runs/abc/job.yaml", out="/data/runs/abc/out", run_id="abc"))
    assert argv[1:] == ["/data/runs/abc/job.yaml", "/data/runs/abc/out", "abc"]  # JOB OUT RUN_ID
    shipped = {}
    for instr, args in final_stage():
        if instr == "COPY" and not args.startswith("--from"):
            src, dst = shlex.split(args)
            shipped[dst] = ROOT / src
    folder, script = argv[0].rsplit("/", 1)
    assert (shipped[folder] / script).is_file(), f"{argv[0]} is not in the image"
    configmap = (K8S / "base" / "configmap.yaml").read_text()
    assert template in configmap
