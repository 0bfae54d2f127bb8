"""deploy/compose.yaml, checked without a Docker engine: the Compose Specification's JSON
Schema (shipped as test data, see data/README.md), the stack the README promises, and every
Laminar service's command and LAMINAR_* settings against the real CLI and settings models."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy.files import (
    DEPLOY,
    REPO,
    check_laminar_env,
    compose_file,
    dockerfile_stages,
    image_env,
    interpolate,
    laminar_command,
)

SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
LAMINAR = ("laminar-db-upgrade", "laminar-server", "laminar-worker", "laminar-relay")


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_specification() -> None:
    assert schema_errors(compose_file()) == []


def test_the_schema_check_catches_a_broken_file() -> None:
    broken = copy.deepcopy(compose_file())
    broken["services"]["laminar-server"]["depends_on"]["temporal"]["condition"] = "healthy"
    broken["services"]["postgres"]["healthcheck"]["interval"] = 5
    assert len(schema_errors(broken)) >= 2


def test_the_stack_has_every_service_the_readme_names() -> None:
    services = compose_file()["services"]
    images = {name: str(service.get("image", "")) for name, service in services.items()}
    assert images["postgres"].startswith("postgres:")
    assert images["temporal"].startswith("temporalio/auto-setup:")
    assert services["temporal"]["environment"]["DB"] == "postgres12"  # PostgreSQL-backed
    assert images["temporal-ui"].startswith("temporalio/ui:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert images["trino"].startswith("trinodb/trino:")
    assert "sql-gateway.sh" in services["flink-sql-gateway"]["command"][0]
    assert images["prometheus"].startswith("prom/prometheus:")
    assert services["laminar-db-upgrade"]["restart"] == "no"


def test_flink_cluster_is_the_version_the_worker_image_carries() -> None:
    makefile = (REPO / "Makefile").read_text()
    version = re.search(r"^FLINK_VERSION := (\S+)", makefile, re.M)
    assert version is not None
    for name in ("flink-jobmanager", "flink-taskmanager", "flink-sql-gateway"):
        image = compose_file()["services"][name]["image"]
        assert image.startswith(f"flink:{version[1]}-"), (name, image)


def test_laminar_services_wait_for_healthy_dependencies() -> None:
    services = compose_file()["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )
            else:
                assert wanted == "service_completed_successfully", (name, dependency)
                assert services[dependency].get("restart") == "no", dependency
    for name in ("laminar-server", "laminar-worker", "laminar-relay"):
        depends = services[name]["depends_on"]
        assert depends["laminar-db-upgrade"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in services[name], name
    assert services["laminar-db-upgrade"]["depends_on"]["temporal"]["condition"] == (
        "service_healthy"
    )  # it registers the search attributes on Temporal


def test_prometheus_scrapes_each_metrics_endpoint() -> None:
    import yaml

    services = compose_file()["services"]
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert "laminar-server:8092" in targets
    for name in ("laminar-worker", "laminar-relay"):
        command = services[name]["command"]
        port = command[command.index("--metrics-port") + 1]
        assert f"{name}:{port}" in targets, name
        assert port in " ".join(services[name]["healthcheck"]["test"]), name


def test_examples_are_mounted_where_the_source_dir_points() -> None:
    services = compose_file()["services"]
    for name in ("laminar-server", "laminar-worker"):
        mounts = services[name]["volumes"]
        source_dir = services[name]["environment"]["LAMINAR_SOURCE_DIR"]
        assert f"../examples:{source_dir}:ro" in mounts, name
        assert (DEPLOY / ".." / "examples").is_dir()


@pytest.mark.parametrize("name", LAMINAR)
def test_laminar_service_command_and_settings(name: str) -> None:
    services = compose_file()["services"]
    service = services[name]
    target = service["build"]["target"]
    assert target in dockerfile_stages(), f"{name}: no Dockerfile target {target}"
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    command = laminar_command(service["command"])
    environment = {k: interpolate(str(v)) for k, v in service["environment"].items()}
    env = {**image_env(dockerfile_stages(), target), **environment}
    check_laminar_env(command, env, f"compose service {name}")


def test_secrets_come_from_the_env_file_not_the_compose_file() -> None:
    for name, service in compose_file()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|PWD|API_KEY|SECRET", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), (name, key)
    example = (DEPLOY / ".env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", (DEPLOY / "compose.yaml").read_text()))
    assert required <= set(re.findall(r"^(\w+)=", example, re.M)), required
    assert "deploy/.env" in (REPO / ".gitignore").read_text().splitlines()
