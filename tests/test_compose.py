"""docker-compose.yml and the Dockerfile, checked by parsing (no Docker engine runs here)."""

import re
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def env_of(name: str) -> dict:
    env = SERVICES[name].get("environment", {})
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def container_port(name: str) -> set[int]:
    ports = {int(str(p).split(":")[-1]) for p in SERVICES[name].get("ports", [])}
    return ports | ({7233} if name == "temporal" else set())


def test_every_dependency_exists_and_waits_for_the_right_condition():
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        for target in depends:
            assert target in SERVICES, f"{name} depends on missing {target}"
        if isinstance(depends, dict):
            for target, rule in depends.items():
                if rule.get("condition") == "service_healthy":
                    assert "healthcheck" in SERVICES[target], f"{name} waits for {target} to be healthy, but it has no healthcheck"
                if rule.get("condition") == "service_completed_successfully":
                    assert SERVICES[target].get("restart") == "no", f"{target} is a one-shot job"


def test_api_and_worker_reach_temporal_and_the_database():
    for name in ("api", "worker"):
        env = env_of(name)
        host, port = env["TEMPORAL_ADDRESS"].split(":")
        assert host in SERVICES and int(port) in container_port(host)
        url = urlparse(env["TAKEBACK_DATABASE_URL"])
        assert url.scheme == "postgresql+psycopg" and url.hostname in SERVICES and SERVICES[url.hostname]["image"].startswith("postgres:")
        assert url.path.lstrip("/") in (ROOT / "deploy/postgres-init.sql").read_text()  # the database is created
        assert env["TEMPORAL_NAMESPACE"] == "default" and "TAKEBACK_CARRIER_WEBHOOK_SECRET" in env
    assert env_of("temporal-ui")["TEMPORAL_ADDRESS"].split(":")[0] == "temporal"


def test_schema_job_precedes_the_server_and_uses_the_same_database():
    assert SERVICES["temporal"]["depends_on"]["temporal-admin-tools"]["condition"] == "service_completed_successfully"
    admin, server = env_of("temporal-admin-tools"), env_of("temporal")
    assert admin["SQL_HOST"] == server["POSTGRES_SEEDS"] == "postgresql"
    assert admin["SQL_USER"] == server["POSTGRES_USER"] and admin["SQL_PASSWORD"] == server["POSTGRES_PWD"]
    assert "temporal_visibility" in " ".join(SERVICES["temporal-admin-tools"]["command"])


def test_published_ports_are_unique_and_images_pinned():
    published = [str(p).split(":")[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image {image} is not pinned"
        assert re.search(r":\d", image), f"{name} image {image} has no version tag"


def test_dockerfile_builds_what_compose_runs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in ("api", "worker"):
        assert SERVICES[name]["build"] in (".", {"context": "."})
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY source {path} does not exist"
    assert 'ENTRYPOINT ["takeback"]' in dockerfile and "USER takeback" in dockerfile
    assert SERVICES["api"]["command"][0] == "api" and SERVICES["worker"]["command"] == ["worker"]
