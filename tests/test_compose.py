"""docker-compose.yml, the Dockerfile and deploy/ scripts, checked by parsing (no Docker engine runs here)."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = ("worker-blue", "worker-green")  # one Worker Deployment, two build ids (README "Production-like")
APP_SERVICES = ("api", *WORKERS)
# Set on the workers only: the deployment they poll in and their build id (worker.py's versioning settings).
VERSIONING_ENV = {"TAKEBACK_DEPLOYMENT_NAME", "TAKEBACK_BUILD_ID"}
ONE_SHOT_JOBS = ("temporal-admin-tools", "temporal-create-namespace")


def env_of(name: str) -> dict:
    env = SERVICES[name].get("environment", {})
    return {str(k): str(v) for k, v in (env.items() if isinstance(env, dict) else (item.split("=", 1) for item in env))}


# What an operator must set (`${NAME:?}`: compose refuses to start without them), as a deployment would.
REQUIRED = {
    "POSTGRES_PASSWORD": "pg-9f2c41d07b",
    "TAKEBACK_DB_PASSWORD": "tb-5e81aa2c3d",
    "TAKEBACK_CARRIER_WEBHOOK_SECRET": "5c1d0f3e9a7b46e2b8d4a1c7f0e3b9d26a4c8e1f7b3d5a9c2e6f0b4d8a1c3e5f",
    "TAKEBACK_CONSOLE_SECRET": "9b2e7d4a1f6c3e8b5d0a7f2c9e4b1d6a8c3f5e0b7d2a9c4e1f6b3d8a5c0e7f2b",
    "GRAFANA_ADMIN_PASSWORD": "gf-3c9e1a7b5d",
    "TAKEBACK_BLUE_BUILD_ID": "2026.12.1",
    "TAKEBACK_GREEN_BUILD_ID": "2026.12.2",
}


def resolve(value: str) -> str:
    """What compose makes of `${NAME:-default}` when NAME is unset, and of `${NAME:?message}` when it is set (REQUIRED)."""
    value = re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", lambda match: REQUIRED[match.group(1)], value)
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", value)


def depends_of(name: str) -> dict:
    depends = SERVICES[name].get("depends_on", {})
    return depends if isinstance(depends, dict) else {target: {"condition": "service_started"} for target in depends}


def port_mappings(name: str) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port."""
    result = []
    for spec in SERVICES[name].get("ports", []):
        parts = resolve(str(spec)).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        result.append((host_ip, int(parts[-2]), int(parts[-1])))
    return result


def listens_on(name: str) -> set[int]:
    """Container ports a service listens on: published ones, plus the frontend port of the Temporal server."""
    ports = {container for _, _, container in port_mappings(name)}
    image = SERVICES[name].get("image", "")
    return ports | ({7233} if image.startswith("temporalio/server:") else set())


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())  # join continued lines
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines if line and not line.startswith("#")]


DOCKERFILE = dockerfile_instructions(ROOT / "Dockerfile")


def instructions(keyword: str) -> list[str]:
    return [argument for name, argument in DOCKERFILE if name == keyword]


def host_mounts(name: str) -> list[tuple[Path, str]]:
    mounts = []
    for volume in SERVICES[name].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((ROOT / source, target))
    return mounts


# --- the graph -------------------------------------------------------------------------------


def test_every_dependency_exists_and_waits_for_the_right_condition():
    for name in SERVICES:
        for target, rule in depends_of(name).items():
            assert target in SERVICES, f"{name} depends on missing {target}"
            condition = rule.get("condition", "service_started")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target} to be healthy, but it has no healthcheck"
            if condition == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", f"{target} is a one-shot job and must not restart"


def test_the_dependency_graph_has_no_cycle_and_starts_in_order():
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"dependency cycle through {name}"
        if name in order:
            return
        visiting.add(name)
        for target in depends_of(name):
            visit(target)
        visiting.discard(name)
        order.append(name)

    for name in SERVICES:
        visit(name)
    before = order.index
    assert before("postgresql") < before("temporal-admin-tools") < before("temporal") < before("temporal-create-namespace") < before("api")
    for name in APP_SERVICES:
        assert depends_of(name)["temporal-create-namespace"]["condition"] == "service_completed_successfully"
        assert depends_of(name)["postgresql"]["condition"] == "service_healthy"


def test_long_running_services_restart_and_jobs_do_not():
    for name, service in SERVICES.items():
        if name in ONE_SHOT_JOBS:
            assert service["restart"] == "no"
        else:
            assert service.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name} does not come back after a crash"


# --- the app's configuration --------------------------------------------------------------


def test_api_and_worker_reach_temporal_and_the_database():
    for name in APP_SERVICES:
        env = env_of(name)
        host, port = env["TEMPORAL_ADDRESS"].split(":")
        assert host == "temporal" and int(port) in listens_on(host)
        assert env["TEMPORAL_NAMESPACE"] == env_of("temporal-create-namespace")["NAMESPACE"] == "default"
        url = urlparse(resolve(env["TAKEBACK_DATABASE_URL"]))
        assert url.scheme == "postgresql+psycopg" and url.hostname in SERVICES and url.port == 5432
        assert SERVICES[url.hostname]["image"].startswith("postgres:")
        postgres = env_of(url.hostname)
        # The init script creates this role, password and database.
        assert (url.username, url.password, url.path.lstrip("/")) == (
            postgres["TAKEBACK_DB_USER"], resolve(postgres["TAKEBACK_DB_PASSWORD"]), postgres["TAKEBACK_DB_NAME"]
        )
        assert "TAKEBACK_CARRIER_WEBHOOK_SECRET" in env
        assert "TAKEBACK_CONSOLE_SECRET" in env  # the console on, its cookies signed with the operator's secret
        assert "SENDGRID_API_KEY" in env and env["SENDGRID_API_KEY"].startswith("${SENDGRID_API_KEY")  # passed through
    for worker in WORKERS:  # the API's environment, plus the worker's place in the deployment
        env = env_of(worker)
        assert {key: value for key, value in env.items() if key not in VERSIONING_ENV} == env_of("api") and VERSIONING_ENV <= set(env)


def test_the_app_environment_is_what_settings_read():
    from settings import Settings

    aliases = {field.alias for field in Settings.model_fields.values()}
    aliases |= {choice for field in Settings.model_fields.values() for choice in getattr(field.validation_alias, "choices", ())}
    for name in APP_SERVICES:
        unknown = set(env_of(name)) - aliases
        assert not unknown, f"{name} sets variables takeback does not read: {unknown}"
    settings = Settings.model_validate({key: resolve(value) for key, value in env_of("worker-blue").items()})
    assert settings.temporal_address == "temporal:7233" and settings.effective_database_url.startswith("postgresql+psycopg://")
    assert settings.sendgrid_api_key in (None, "")  # empty: the outbox, not SendGrid
    assert settings.env == "production" and settings.payload_keyring == {}  # the codec is off until keys are set
    # ... which production refuses unless the outbox is asked for: with it, nothing else is missing.
    assert any("SENDGRID_API_KEY" in problem for problem in settings.startup_problems())
    asked = {key: resolve(value) for key, value in env_of("worker-blue").items()} | {"TAKEBACK_MAIL_OUTBOX": "true"}
    assert Settings.model_validate(asked).startup_problems() == []


def test_the_ui_and_the_namespace_job_point_at_temporal():
    for name in ("temporal-ui", "temporal-create-namespace"):
        host, port = env_of(name)["TEMPORAL_ADDRESS"].split(":")
        assert host == "temporal" and int(port) in listens_on("temporal")
    assert ("127.0.0.1", 8080, 8080) in port_mappings("temporal-ui")


def test_schema_job_precedes_the_server_and_uses_the_same_database():
    assert depends_of("temporal")["temporal-admin-tools"]["condition"] == "service_completed_successfully"
    admin, server, postgres = env_of("temporal-admin-tools"), env_of("temporal"), env_of("postgresql")
    assert admin["SQL_PLUGIN"] == server["DB"] == "postgres12"
    assert admin["SQL_HOST"] == server["POSTGRES_SEEDS"] == "postgresql"
    assert admin["SQL_PORT"] == server["DB_PORT"] == "5432"
    assert admin["SQL_USER"] == server["POSTGRES_USER"] == postgres["POSTGRES_USER"]
    assert admin["SQL_PASSWORD"] == server["POSTGRES_PWD"] == postgres["POSTGRES_PASSWORD"]
    assert (admin["TEMPORAL_DB"], admin["TEMPORAL_VISIBILITY_DB"]) == (server["DBNAME"], server["VISIBILITY_DBNAME"])
    assert server["DBNAME"] != postgres["TAKEBACK_DB_NAME"] != server["VISIBILITY_DBNAME"]


def test_temporal_server_and_admin_tools_are_the_same_release():
    server = SERVICES["temporal"]["image"].split(":")[1]
    for job in ONE_SHOT_JOBS:
        assert SERVICES[job]["image"].split(":")[1].split("-")[0] == server


# --- ports and images -------------------------------------------------------------------------


def test_published_ports_are_unique_and_images_pinned():
    published = [(host_ip, host_port) for name in SERVICES for host_ip, host_port, _ in port_mappings(name)]
    assert len({port for _, port in published}) == len(published), f"a host port is published twice: {published}"
    assert port_mappings("api") == [] and ("127.0.0.1", 8443, 443) in port_mappings("caddy")  # the API only behind TLS
    for name, service in SERVICES.items():
        if "build" in service or name in WORKERS:  # ours: built here, the workers' tagged with their build id
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image {image} is not pinned"
        assert re.search(r":v?\d+\.\d+", image), f"{name} image {image} has no version tag"
    assert SERVICES["postgresql"]["image"].startswith("postgres:15")


def test_healthchecks_probe_the_service_itself():
    assert "pg_isready" in " ".join(SERVICES["postgresql"]["healthcheck"]["test"])
    assert "7233" in " ".join(SERVICES["temporal"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(SERVICES["api"]["healthcheck"]["test"])
    from api.app import create_app

    assert "/healthz" in create_app().openapi()["paths"]


# --- deploy/ scripts mounted into the containers -------------------------------------------


def test_mounted_scripts_exist_and_are_valid_shell():
    mounted = [(name, source, target) for name in SERVICES for source, target in host_mounts(name)]
    assert mounted
    for name, source, target in mounted:
        assert source.is_file(), f"{name} mounts {source}, which does not exist"
        if source.suffix == ".sh":
            subprocess.run(["sh", "-n", str(source)], check=True)
        command = SERVICES[name].get("command")
        if name in ONE_SHOT_JOBS:
            assert command == [target], f"{name} runs {command}, not its mounted script {target}"
    init_targets = [target for _, target in host_mounts("postgresql")]
    assert any(target.startswith("/docker-entrypoint-initdb.d/") and target.endswith((".sh", ".sql")) for target in init_targets)


def fake_cli(folder: Path, name: str, script: str) -> None:
    """A stand-in for a CLI of the admin-tools image: records its arguments in folder/calls, then runs `script`."""
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "$@" >> {folder}/calls\nn=$(wc -l < {folder}/calls)\n{script}\n')
    path.chmod(0o755)


def run_script(script: str, folder: Path, service: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{folder}:/usr/bin:/bin", **{key: resolve(value) for key, value in env_of(service).items()}}
    return subprocess.run(["sh", str(ROOT / "deploy" / script)], env=env, capture_output=True, text=True, timeout=20)


def test_the_schema_script_migrates_both_temporal_databases(tmp_path):
    fake_cli(tmp_path, "temporal-sql-tool", "exit 0")
    run = run_script("temporal-setup-schema.sh", tmp_path, "temporal-admin-tools")
    assert run.returncode == 0, run.stderr
    schema = "/etc/temporal/schema/postgresql/v12"
    assert (tmp_path / "calls").read_text().splitlines() == [
        "--database temporal create-database",
        "--database temporal setup-schema -v 0.0",
        f"--database temporal update-schema -d {schema}/temporal/versioned",
        "--database temporal_visibility create-database",
        "--database temporal_visibility setup-schema -v 0.0",
        f"--database temporal_visibility update-schema -d {schema}/visibility/versioned",
    ]


def test_the_schema_script_stops_at_the_first_failure(tmp_path):
    fake_cli(tmp_path, "temporal-sql-tool", '[ "$n" -ge 2 ] && exit 1\nexit 0')
    run = run_script("temporal-setup-schema.sh", tmp_path, "temporal-admin-tools")
    assert run.returncode != 0  # the server then does not start on a half-made schema
    assert len((tmp_path / "calls").read_text().splitlines()) == 2


def test_the_init_script_creates_the_app_role_and_database():
    script = (ROOT / "deploy/postgres-init.sh").read_text()
    assert "CREATE ROLE" in script and "CREATE DATABASE" in script and "OWNER" in script
    for variable in ("TAKEBACK_DB_USER", "TAKEBACK_DB_PASSWORD", "TAKEBACK_DB_NAME"):
        assert variable in script and variable in env_of("postgresql")


def test_the_namespace_script_retries_until_the_namespace_exists(tmp_path):
    """The frontend fails the first calls, then serves: the script keeps trying, then creates the namespace."""
    fake_cli(tmp_path, "temporal", '[ "$3" = create ] && [ "$n" -ge 4 ] && exit 0\nexit 1')
    fake_cli(tmp_path, "sleep", "exit 0")
    run = run_script("temporal-create-namespace.sh", tmp_path, "temporal-create-namespace")
    assert run.returncode == 0, run.stderr
    calls = [line for line in (tmp_path / "calls").read_text().splitlines() if line.startswith("operator namespace")]
    assert calls[-1].startswith("operator namespace create --namespace default") and "--address temporal:7233" in calls[-1]


def test_the_namespace_script_leaves_an_existing_namespace_alone(tmp_path):
    fake_cli(tmp_path, "temporal", '[ "$3" = describe ] && exit 0\n[ "$2" = search-attribute ] && exit 0\nexit 1')
    run = run_script("temporal-create-namespace.sh", tmp_path, "temporal-create-namespace")
    assert run.returncode == 0, run.stderr
    assert [line.split()[1:3] for line in (tmp_path / "calls").read_text().splitlines()] == [["namespace", "describe"], ["search-attribute", "create"], ["search-attribute", "create"]]


def test_the_namespace_script_gives_up_in_the_end(tmp_path):
    fake_cli(tmp_path, "temporal", "exit 1")
    fake_cli(tmp_path, "sleep", "exit 0")
    run = run_script("temporal-create-namespace.sh", tmp_path, "temporal-create-namespace")
    assert run.returncode == 1 and "could not register namespace default" in run.stderr


# --- the image ---------------------------------------------------------------------------------


def copy_sources() -> list[tuple[list[str], str]]:
    result = []
    for argument in instructions("COPY"):
        if argument.startswith("--from"):
            continue
        words = json_or_shell(argument)
        words = [word for word in words if not word.startswith("--")]
        result.append((words[:-1], words[-1]))
    return result


def json_or_shell(argument: str) -> list[str]:
    import json

    return json.loads(argument) if argument.startswith("[") else shlex.split(argument)


def test_dockerfile_builds_what_compose_runs():
    assert instructions("FROM") == ["python:3.11-slim"]
    build = SERVICES["api"]["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (ROOT / context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")).is_file()
    for name in WORKERS:  # the same image, tagged with the build id by `docker build -t takeback:<id> .`, never rebuilt by compose
        assert SERVICES[name]["image"].split(":")[0] == SERVICES["api"]["image"].split(":")[0] == "takeback"
        assert "build" not in SERVICES[name] and SERVICES[name]["pull_policy"] == "never"
    for sources, _destination in copy_sources():
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"
    assert json_or_shell(instructions("ENTRYPOINT")[-1]) == ["takeback"]
    assert instructions("USER") == ["takeback"] and any("useradd" in run and "takeback" in run for run in instructions("RUN"))
    assert any(re.search(r"pip install .*\.(\s|$)", run) for run in instructions("RUN")), "the project itself is not installed"
    assert SERVICES["api"]["command"][:1] == ["api"] and all(SERVICES[name]["command"] == ["worker"] for name in WORKERS)
    assert json_or_shell(instructions("CMD")[-1])[0] in ("api", "worker")
    from cli import build_parser

    assert SERVICES["codec-server"]["image"] == SERVICES["api"]["image"]
    for name in (*APP_SERVICES, "codec-server"):  # the commands parse with the real CLI
        build_parser().parse_args(SERVICES[name]["command"])


def project_modules() -> set[str]:
    """Top-level packages and modules pyproject.toml declares."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in project["packages"]["find"]["include"]}
    return packages | set(project["py-modules"])


def test_the_image_copies_every_module_of_the_project():
    """pyproject's packages and py-modules all reach WORKDIR, from where `pip install .` builds the image's package."""
    copied = {source.rstrip("/") for sources, _ in copy_sources() for source in sources}
    wanted = {name if (ROOT / name).is_dir() else f"{name}.py" for name in project_modules()}
    assert wanted <= copied, f"not copied into the image: {wanted - copied}"
    workdir = instructions("WORKDIR")[-1]
    assert all(destination.startswith(("./", workdir)) for _, destination in copy_sources())
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert not wanted & set(dockerignore), "a copied source is excluded by .dockerignore"


def test_the_package_built_from_the_copied_tree_runs_on_its_own(tmp_path):
    """Lay out /app as the Dockerfile does, `pip install .` it (not editable), then import the app and
    migrate a database from the installed package alone: subpackages and migration files must be in it."""
    app = tmp_path / "app"
    app.mkdir()
    for sources, destination in copy_sources():
        for source in sources:
            path = ROOT / source
            into_folder = destination.endswith("/") or len(sources) > 1
            target = (app / destination / path.name) if into_folder else app / destination
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(app)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    code = (
        "import sys, api.app, store.db, worker, cli\n"
        "import api.routes, demo, service.deals, temporal_client, workflows.deal\n"
        f"ours = {sorted(project_modules())!r}\n"
        "loaded = {name: m for name, m in sys.modules.items() if name.split('.')[0] in ours and getattr(m, '__file__', None)}\n"
        f"stray = [m.__file__ for m in loaded.values() if not m.__file__.startswith({str(site)!r})]\n"
        "assert not stray and len(loaded) > 20, (stray, len(loaded))\n"
        "from api.app import create_app; create_app()\n"
        "from store.db import get_engine\n"
        f"engine = get_engine('sqlite:///{tmp_path}/image.db')\n"
        "from sqlalchemy import inspect; from store.tables import EmailMessage\n"
        "assert EmailMessage.__tablename__ in inspect(engine).get_table_names()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]


# --- operating it: search attributes, metrics, Prometheus and Grafana (issue 13) --------------------


def test_the_namespace_script_registers_the_search_attributes_the_app_uses(tmp_path):
    """Both are created (or, existing already, found in the list); one that cannot be either fails the job."""
    from workflows.search_attributes import REGISTERED

    assert env_of("api")["TAKEBACK_SEARCH_ATTRIBUTES"] == "true"
    names = [key.name for key in REGISTERED]
    # DealStatus exists already (its create is refused, the list shows it); PartnerId is created.
    fake_cli(tmp_path, "temporal", '[ "$3" = describe ] && exit 0\n[ "$3" = list ] && echo "  DealStatus  Keyword" && exit 0\n'
             '[ "$3" = create ] && [ "$7" = PartnerId ] && exit 0\nexit 1')
    run = run_script("temporal-create-namespace.sh", tmp_path, "temporal-create-namespace")
    assert run.returncode == 0, run.stderr
    created = [line for line in (tmp_path / "calls").read_text().splitlines() if line.startswith("operator search-attribute create")]
    assert [line.split()[6] for line in created] == names and all("--type Keyword" in line for line in created)
    (tmp_path / "calls").unlink()
    fake_cli(tmp_path, "temporal", '[ "$3" = describe ] && exit 0\n[ "$3" = list ] && exit 0\nexit 1')  # neither created nor listed
    run = run_script("temporal-create-namespace.sh", tmp_path, "temporal-create-namespace")
    assert run.returncode == 1 and "could not register search attribute DealStatus" in run.stderr


def test_the_observability_profile_scrapes_the_api_and_the_worker():
    prometheus_config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus_config["scrape_configs"]}
    worker_host, worker_port = env_of("worker-blue")["TAKEBACK_WORKER_METRICS_ADDRESS"].split(":")
    assert worker_host == "0.0.0.0" and targets["takeback-worker"] == [f"{name}:{worker_port}" for name in WORKERS]
    api_port = SERVICES["api"]["command"][SERVICES["api"]["command"].index("--port") + 1]
    assert targets["takeback-api"] == [f"api:{api_port}"]
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["profiles"] == ["observability"]  # off unless asked for
        assert all(host_ip == "127.0.0.1" for host_ip, _, _ in port_mappings(name))
    mounted = {target: source for source, target in host_mounts("prometheus")}
    config_dir = Path(SERVICES["prometheus"]["command"][0].split("=", 1)[1]).parent
    for rule_file in prometheus_config["rule_files"]:  # relative to the config, in the image as in the repo
        assert mounted[str(config_dir / rule_file)] == ROOT / "deploy/prometheus" / rule_file
    assert mounted[str(config_dir / "prometheus.yml")] == ROOT / "deploy/prometheus/prometheus.yml"
    # The worker's health is its container's healthcheck; Caddy answers /metrics itself (404), never the API's.
    for name in WORKERS:
        assert env_of(name)["TAKEBACK_WORKER_HEALTH_ADDRESS"].split(":")[1] in " ".join(SERVICES[name]["healthcheck"]["test"])
    caddyfile = (ROOT / "deploy/Caddyfile").read_text()
    assert re.search(r"@metrics path /metrics\s+respond @metrics 404\s+reverse_proxy", caddyfile)


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    mounts = {target: source for source, target in host_mounts("grafana")}
    datasource = yaml.safe_load(mounts["/etc/grafana/provisioning/datasources/takeback.yml"].read_text())["datasources"][0]
    prometheus_port = port_mappings("prometheus")[0][2]
    assert datasource["type"] == "prometheus" and datasource["url"] == f"http://prometheus:{prometheus_port}"
    provider = yaml.safe_load(mounts["/etc/grafana/provisioning/dashboards/takeback.yml"].read_text())["providers"][0]
    dashboard_files = [target for target in mounts if target.startswith(provider["options"]["path"] + "/")]
    assert dashboard_files and env_of("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in dashboard_files
    import json

    for target in dashboard_files:
        dashboard = json.loads(mounts[target].read_text())
        panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
        assert panels and all(panel["datasource"]["uid"] == datasource["uid"] and panel["targets"] for panel in panels)


# --- hardening, round 2 (issue 24): who reaches Temporal, the proxy, Grafana, blue/green workers -----


def networks_of(name: str) -> set[str]:
    networks = SERVICES[name].get("networks", ["default"])
    return set(networks) if isinstance(networks, list) else set(networks)


TEMPORAL_CLIENTS = {"temporal-create-namespace", "temporal-ui", *APP_SERVICES}


def test_temporal_is_not_published_and_only_its_clients_share_a_network_with_it():
    assert port_mappings("temporal") == [], "Temporal's gRPC port is published on the host"
    own_dependencies = set(depends_of("temporal"))  # its database and schema job, on the database network
    for name in SERVICES:
        shared = networks_of(name) & networks_of("temporal")
        if name in TEMPORAL_CLIENTS:
            assert "temporal" in shared, f"{name} needs Temporal and cannot reach it"
        elif name in own_dependencies:
            assert shared == {"database"}, f"{name} shares {shared} with Temporal"
        elif name != "temporal":
            assert not shared, f"{name} reaches Temporal's gRPC API on {shared} without needing it"
    for name in TEMPORAL_CLIENTS - {"temporal-ui"}:  # the UI's own TEMPORAL_ADDRESS is tested above
        assert env_of(name)["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_the_api_trusts_forwarded_addresses_from_the_proxy_alone():
    import ipaddress

    allowed = resolve(env_of("api")["FORWARDED_ALLOW_IPS"])
    assert allowed != "*" and "," not in allowed
    caddy_networks = SERVICES["caddy"]["networks"]
    (network,) = [name for name in caddy_networks if name in networks_of("api")]  # the one Caddy reaches the API on
    assert resolve(caddy_networks[network]["ipv4_address"]) == allowed  # a fixed address: the proxy's
    subnet = resolve(COMPOSE["networks"][network]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(allowed) in ipaddress.ip_network(subnet)
    from settings import Settings

    assert Settings.model_validate({"FORWARDED_ALLOW_IPS": allowed}).forwarded_allow_ips == allowed


def test_grafana_needs_a_sign_in_and_the_operators_admin_password():
    env = env_of("grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # required, no default
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_the_workers_run_blue_green_in_one_worker_deployment():
    colours = {name: env_of(name) for name in WORKERS}
    assert {env["TAKEBACK_DEPLOYMENT_NAME"] for env in colours.values()} == {"takeback"}
    build_ids = {name: env["TAKEBACK_BUILD_ID"] for name, env in colours.items()}
    assert build_ids["worker-blue"].startswith("${TAKEBACK_BLUE_BUILD_ID:?") and build_ids["worker-green"].startswith("${TAKEBACK_GREEN_BUILD_ID:?")
    for name, build_id in build_ids.items():  # each colour runs the image of its build id, with its build id
        assert resolve(SERVICES[name]["image"]) == f"takeback:{resolve(build_id)}"
    assert {env.get("TAKEBACK_TASK_QUEUE") for env in colours.values()} == {env_of("api").get("TAKEBACK_TASK_QUEUE")}  # one queue, the API's
    assert len({resolve(build_id) for build_id in build_ids.values()}) == 2
    readme = (ROOT / "README.md").read_text()
    for step in ("set-current-version", "TAKEBACK_GREEN_BUILD_ID", "docker build -t takeback:"):
        assert step in readme, f"README does not say how a rollout does {step}"


def server_version() -> tuple[int, ...]:
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)\.(\d+)", SERVICES["temporal"]["image"].split(":")[1]).groups())


def dynamic_config() -> dict:
    path = env_of("temporal").get("DYNAMIC_CONFIG_FILE_PATH")
    mounts = {target: source for source, target in host_mounts("temporal")}
    return yaml.safe_load(mounts[path].read_text()) if path else {}


def test_the_temporal_server_dispatches_by_priority_and_serves_worker_versioning():
    """The deals' decisions are sent with priority 1 (tests/test_mail_queue.py): 1.29.1 ignores Priority
    unless matching.useNewMatcher is on; 1.32 was measured to honour it without the flag."""
    config = dynamic_config()

    def on(key: str) -> bool:
        return any(entry.get("value") is True and not entry.get("constraints") for entry in config.get(key, []))

    assert server_version() >= (1, 29, 1), "Worker Deployments need server 1.29.1 or later"
    assert server_version() >= (1, 32, 0) or on("matching.useNewMatcher"), "the server ignores task-queue priority"
    assert server_version() >= (1, 31, 0) or on("system.enableDeploymentVersions"), "Worker Deployment versions are off"
