"""Readers for what deploy/ holds: the Dockerfile's instructions, compose interpolation, the
rendered kustomize overlays, and the LAMINAR_* checks every deploy file shares."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from typer.main import get_command

from pipeline_service.commands import app
from pipeline_service.settings import (
    FlinkSettings,
    KubernetesJobSettings,
    ServiceSettings,
    SparkSettings,
    unknown_env_warnings,
)
from schemas.connections import load_resources

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("dev", "prod")


# --- Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages(path: Path = DEPLOY / "Dockerfile") -> dict[str, Stage]:
    """The Dockerfile's stages by name, each with its (INSTRUCTION, arguments) in order;
    continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, words[0])
        elif current is not None:
            current.instructions.append((keyword, rest.strip()))
    return stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def image_env(stages: dict[str, Stage], target: str) -> dict[str, str]:
    """The ENV a container of `target` starts with ($VAR and ${VAR} expanded as Docker does,
    over the base image's PATH)."""
    env: dict[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    for stage in stage_chain(stages, target):
        for keyword, rest in stage.instructions:
            if keyword == "ENV":
                before = dict(env)
                for word in shlex.split(rest):
                    key, _, value = word.partition("=")
                    env[key] = re.sub(
                        r"\$\{?(\w+)\}?", lambda m, seen=before: seen.get(m[1], ""), value
                    )
    return env


# --- compose --------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def interpolate(value: str) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`, as if every required
    variable were set (to a placeholder named after it)."""

    def replace(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        return f"placeholder-{match['name'].lower()}"

    return _INTERPOLATION.sub(replace, value)


def compose_file() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


# --- kubernetes -----------------------------------------------------------------------------


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_overlay(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one overlay: the objects `kubectl apply -k` would send."""
    binary = kubectl()
    assert binary is not None
    done = subprocess.run(
        [binary, "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload in a render."""
    found = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            found.append(
                (f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"])
            )
    return found


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container_env(
    container: dict[str, Any], objects: list[dict[str, Any]], external_secrets: dict[str, set[str]]
) -> dict[str, str]:
    """A container's environment as the kubelet would build it: envFrom ConfigMaps, then env;
    secret values are placeholders. A Secret the render lacks must be one of
    `external_secrets` (created outside the repository) with the key listed there."""
    config_maps = by_kind(objects, "ConfigMap")
    secrets = by_kind(objects, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: only ConfigMaps go in envFrom"
        name = source["configMapRef"]["name"]
        assert name in config_maps, f"{container['name']}: no ConfigMap {name} in the render"
        env.update(config_maps[name].get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret, key = ref["name"], ref["key"]
        if secret in secrets:
            data = {**secrets[secret].get("data", {}), **secrets[secret].get("stringData", {})}
            assert key in data, f"{container['name']}: Secret {secret} has no key {key}"
        else:
            assert key in external_secrets.get(secret, set()), (
                f"{container['name']}: Secret {secret} key {key} is neither in the render nor "
                "one the README tells the operator to create"
            )
        env[item["name"]] = f"placeholder-secret-{secret}-{key}"
    return env


# --- the laminar command and its settings ---------------------------------------------------

# What each process needs set to work in a deployment (their defaults suit a laptop only:
# SQLite in the user's data dir, Temporal on 127.0.0.1, the API on loopback).
REQUIRED = {
    "server": {
        "LAMINAR_DATABASE_URL",
        "LAMINAR_TEMPORAL_ADDRESS",
        "LAMINAR_HTTP_HOST",
        "LAMINAR_ADMIN_API_KEY",
    },
    "worker": {"LAMINAR_DATABASE_URL", "LAMINAR_TEMPORAL_ADDRESS", "LAMINAR_WORK_DIR"},
    "events relay": {"LAMINAR_DATABASE_URL", "LAMINAR_KAFKA_BOOTSTRAP_SERVERS"},
    "db upgrade": {"LAMINAR_DATABASE_URL", "LAMINAR_TEMPORAL_ADDRESS"},
    "db check": {"LAMINAR_DATABASE_URL"},
}
SETTINGS_MODELS = (ServiceSettings, SparkSettings, FlinkSettings, KubernetesJobSettings)


def laminar_command(args: list[str]) -> str:
    """Parse `laminar <args>` with the real CLI (an unknown command or option raises) and say
    which command it is ("server", "events relay", ...)."""
    group: Any = get_command(app)
    words: list[str] = []
    rest = list(args)
    while True:
        context = group.context_class(group)
        command = group.get_command(context, rest[0])
        assert command is not None, f"laminar has no command {' '.join([*words, rest[0]])!r}"
        words.append(rest.pop(0))
        if hasattr(command, "get_command") and rest:
            group = command
            continue
        command.make_context(" ".join(words), rest)  # raises on a bad option or value
        return " ".join(words)


def check_laminar_env(command: str, env: dict[str, str], where: str) -> None:
    """Every LAMINAR_ variable is one Laminar reads, the settings models accept the values,
    and the command's required settings are all there."""
    laminar = {k: v for k, v in env.items() if k.startswith("LAMINAR_")}
    assert unknown_env_warnings(laminar) == [], where
    with mock.patch.dict(os.environ, laminar, clear=True):
        for model in SETTINGS_MODELS:
            model()  # raises ValidationError on a bad value
            for name, info in model.model_fields.items():
                if info.is_required():
                    prefix = model.model_config.get("env_prefix", "")
                    assert f"{prefix}{name}".upper() in laminar, f"{where}: {name} is required"
        load_resources()  # named connections and channels, as the worker loads them
    missing = REQUIRED.get(command, set()) - set(laminar)
    assert not missing, f"{where} (laminar {command}) does not set {sorted(missing)}"
    if command == "server":
        assert laminar["LAMINAR_HTTP_HOST"] not in ("127.0.0.1", "localhost"), (
            f"{where}: a server bound to loopback is unreachable from outside its container"
        )
