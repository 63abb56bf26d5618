"""The deployment files agree with the code and with each other: the compose file, the Dockerfile and
the Helm values name the module, location, ports, commands and environment variables the code
location and deploy/dagster.yaml actually read. No Docker engine or cluster runs here, so the files
are checked by parsing, and the compose file also by Compose's own `config` (which needs no engine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

from cdp_pipeline.defs.executors import EXECUTOR_ENV, EXECUTORS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _env_sources(node) -> set[str]:
    """Every ``{env: NAME}`` in a Dagster YAML document."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_sources(value) for value in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_sources(value) for value in node)) if node else set()
    return set()


def _code_location() -> tuple[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    return project["code_location_target_module"], project["code_location_name"]


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


INSTANCE_ENV = _env_sources(_yaml(DEPLOY / "dagster.yaml"))
WORKSPACE_ENV = _env_sources(_yaml(DEPLOY / "workspace.yaml"))


def test_the_production_instance_shares_the_embedded_instances_run_rules():
    embedded, production = _yaml(REPO / "dagster.yaml"), _yaml(DEPLOY / "dagster.yaml")
    for section in ("concurrency", "run_monitoring", "run_retries", "telemetry"):
        assert production[section] == embedded[section], section
    assert set(production["storage"]) == {"postgres"}
    assert INSTANCE_ENV == {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD"}


def test_the_workspace_loads_the_code_server_by_its_location_name():
    [entry] = _yaml(DEPLOY / "workspace.yaml")["load_from"]
    assert entry["grpc_server"]["location_name"] == _code_location()[1]
    assert WORKSPACE_ENV == {"CDP_CODE_SERVER_HOST", "CDP_CODE_SERVER_PORT"}


def test_compose_runs_the_four_services_with_the_settings_the_code_reads():
    compose = _yaml(REPO / "docker-compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "code_server", "webserver", "daemon"}
    module, location = _code_location()
    code_server = services["code_server"]
    command = code_server["command"]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert (_option(command, "-m"), _option(command, "--location-name")) == (module, location)
    port = _option(command, "-p")
    for name in ("code_server", "webserver", "daemon"):
        environment = services[name]["environment"]
        # Every variable the instance and the workspace read is set, and the workspace points at
        # the code server's service name and port.
        assert INSTANCE_ENV | WORKSPACE_ENV <= set(environment), name
        assert environment["CDP_CODE_SERVER_HOST"] == "code_server"
        assert environment["CDP_CODE_SERVER_PORT"] == port
        assert environment["DAGSTER_PG_HOST"] == "postgres"
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    dockerfile = (REPO / "Dockerfile").read_text()
    workspace_in_image = re.search(r"^COPY deploy/workspace.yaml (\S+)$", dockerfile, re.M).group(1)
    for name in ("webserver", "daemon"):
        assert _option(services[name]["command"], "-w") == workspace_in_image
    # The password is required from the environment, never written in the file.
    assert services["code_server"]["environment"]["DAGSTER_PG_PASSWORD"].startswith("${DAGSTER_PG_PASSWORD:?")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${DAGSTER_PG_PASSWORD:?")
    executor = code_server["environment"][EXECUTOR_ENV]
    assert re.fullmatch(r"\$\{CDP_EXECUTOR:-(\w+)\}", executor).group(1) in EXECUTORS
    # The store, the work folders and the compute logs outlive the containers.
    mounts = {volume.split(":")[1] for volume in code_server["volumes"]}
    assert {"/var/lib/cdp", "/opt/dagster/dagster_home/storage"} <= mounts
    assert code_server["environment"]["CDP_HOME"] == "/var/lib/cdp"


def test_the_image_installs_the_locked_deploy_tree_runs_as_a_user_and_serves_the_location():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    # Every package from the hash-locked tree, the project without resolving anything more.
    installs = re.findall(r"^RUN pip install (.+)$", dockerfile, re.M)
    assert installs == ["--no-cache-dir --require-hashes --no-deps -r requirements.lock", "--no-cache-dir --no-deps ."]
    lock_header = (REPO / "requirements.lock").read_text().splitlines()[1]
    assert "--extra deploy" in lock_header and "--generate-hashes" in lock_header
    assert re.search(r"^dagster-postgres==", (REPO / "requirements.lock").read_text(), re.M)
    assert "gnupg" in dockerfile
    assert re.search(r"^USER (?!root)\w+$", dockerfile, re.M)
    assert re.search(r"^COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml$", dockerfile, re.M)
    assert "ENV DAGSTER_HOME=/opt/dagster/dagster_home" in dockerfile
    module, location = _code_location()
    assert f'"-m", "{module}", "--location-name", "{location}"' in dockerfile
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("dagster-postgres") for req in extras["deploy"])


def test_helm_values_launch_runs_as_pods_from_the_code_location_image():
    values = _yaml(DEPLOY / "helm" / "values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    [deployment] = values["dagster-user-deployments"]["deployments"]
    module, location = _code_location()
    args = deployment["codeServerArgs"]
    assert (_option(args, "-m"), _option(args, "--location-name")) == (module, location)
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env[EXECUTOR_ENV] in EXECUTORS
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert values["postgresql"]["postgresqlScheme"] == _yaml(DEPLOY / "dagster.yaml")["storage"]["postgres"]["postgres_db"]["scheme"]
    assert values["concurrency"]["pools"]["defaultLimit"] == _yaml(REPO / "dagster.yaml")["concurrency"]["pools"]["default_limit"]



def _compose_command() -> list[str]:
    """Docker's own reader of the compose file: the v2 plugin where it is installed, else the
    standalone `docker-compose` that scripts/test.sh installs from Debian. Neither needs an engine."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    assert standalone, "no Compose CLI: install Debian's docker-compose (scripts/test.sh does) or Docker's compose plugin"
    return [standalone]


def _compose_project(tmp_path: Path, *, with_env: bool) -> Path:
    """The compose file as a user lays it out: .env copied from the example, deploy/secrets.env from
    its example plus one secret, so the check sees what `docker compose up` would start."""
    shutil.copy(REPO / "docker-compose.yaml", tmp_path / "docker-compose.yaml")
    (tmp_path / "deploy").mkdir()
    secrets = (DEPLOY / "secrets.env.example").read_text() + "CDP_TEST_CONNECTION_SECRET=only-for-run-workers\n"
    (tmp_path / "deploy" / "secrets.env").write_text(secrets)
    if with_env:
        shutil.copy(DEPLOY / ".env.example", tmp_path / ".env")
    return tmp_path


def _compose_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL")
    return {name: value for name, value in os.environ.items() if name in keep}


def test_docker_compose_reads_the_file_and_gives_secrets_only_to_the_code_server(tmp_path):
    project = _compose_project(tmp_path, with_env=True)
    result = subprocess.run(
        [*_compose_command(), "-f", str(project / "docker-compose.yaml"), "config"],
        cwd=project, env=_compose_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"postgres", "code_server", "webserver", "daemon"}
    example_password = dict(
        line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if line and not line.startswith("#")
    )["DAGSTER_PG_PASSWORD"]
    for name in ("code_server", "webserver", "daemon"):
        assert services[name]["environment"]["DAGSTER_PG_PASSWORD"] == example_password, name
    assert services["code_server"]["environment"]["CDP_TEST_CONNECTION_SECRET"] == "only-for-run-workers"
    for name in ("webserver", "daemon", "postgres"):
        assert "CDP_TEST_CONNECTION_SECRET" not in services[name].get("environment", {}), name


def test_docker_compose_refuses_to_start_without_the_instance_password(tmp_path):
    project = _compose_project(tmp_path, with_env=False)
    result = subprocess.run(
        [*_compose_command(), "-f", str(project / "docker-compose.yaml"), "config"],
        cwd=project, env=_compose_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "set DAGSTER_PG_PASSWORD in .env" in result.stderr


def test_helm_values_mirror_the_instance_run_rules():
    """The chart writes the instance file from these keys; they must say what deploy/dagster.yaml says."""
    values, instance = _yaml(DEPLOY / "helm" / "values.yaml"), _yaml(DEPLOY / "dagster.yaml")
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert (daemon["runCoordinator"]["type"], queued["maxConcurrentRuns"]) == (
        instance["run_coordinator"]["class"],
        instance["concurrency"]["runs"]["max_concurrent_runs"],
    )
    monitoring = daemon["runMonitoring"]
    assert (monitoring["enabled"], monitoring["maxRuntimeSeconds"], monitoring["freeSlotsAfterRunEndSeconds"]) == (
        instance["run_monitoring"]["enabled"],
        instance["run_monitoring"]["max_runtime_seconds"],
        instance["run_monitoring"]["free_slots_after_run_end_seconds"],
    )
    retries = daemon["runRetries"]
    assert (retries["enabled"], retries["maxRetries"], retries["retryOnAssetOrOpFailure"]) == (
        instance["run_retries"]["enabled"],
        instance["run_retries"]["max_retries"],
        instance["run_retries"]["retry_on_asset_or_op_failure"],
    )
    pools = values["concurrency"]["pools"]
    assert values["concurrency"]["enabled"] is True
    assert (pools["defaultLimit"], pools["granularity"]) == (
        instance["concurrency"]["pools"]["default_limit"],
        instance["concurrency"]["pools"]["granularity"],
    )
    assert values["telemetry"]["enabled"] == instance["telemetry"]["enabled"]


def test_helm_run_pods_run_as_the_code_servers_user():
    """The chart hands run pods the deployment's env and volumes but not its pod security context."""
    values = _yaml(DEPLOY / "helm" / "values.yaml")
    [deployment] = values["dagster-user-deployments"]["deployments"]
    run_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert run_pod["securityContext"] == deployment["podSecurityContext"]
    image_uid = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert image_uid is not None
    assert deployment["podSecurityContext"]["runAsUser"] == int(image_uid.group(1))


def test_helm_install_pins_the_chart_to_the_locked_dagster_version():
    """The chart's version is Dagster's and sets the webserver and daemon images' tag."""
    locked = re.search(r"^dagster==(\S+) ", (REPO / "requirements.lock").read_text(), re.M)
    assert locked is not None
    for path in (DEPLOY / "helm" / "values.yaml", REPO / "docs" / "deployment.md"):
        installs = re.findall(r"helm upgrade --install dagster dagster/dagster (.*)", path.read_text())
        assert installs, path
        for install in installs:
            assert f"--version {locked.group(1)} " in install, (path, install)
