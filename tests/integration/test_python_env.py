"""Python steps with `requirements:` run in their own uv-built virtualenv (real uv, packages
from PyPI), built once per requirements hash, once even when two steps ask at the same time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import steps.python_env as python_env
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import PythonStep
from schemas.run import RunContext
from steps.base import StepContext
from steps.engines.duckdb import DuckDBEngine
from steps.python_script import PythonScriptExecutor

SCRIPT = """\
import json, os, sys
import six
try:
    import pydantic  # Laminar's own dependency: must not be visible here
    leaked = True
except ImportError:
    leaked = False
with open(os.environ["LAMINAR_RESULT"], "w") as f:
    json.dump({"six": six.__version__, "prefix": sys.prefix, "leaked": leaked}, f)
"""


@pytest.fixture
def engine() -> Iterator[DuckDBEngine]:
    eng = DuckDBEngine(None)
    yield eng
    eng.close()


def ctx_for(tmp_path: Path, step_id: str) -> StepContext:
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    return StepContext(
        run=RunContext.manual("p", "default/p/x", moment),
        step_id=step_id,
        attempt=1,
        idempotency_key=f"default/p/x/{step_id}",
        source_dir=tmp_path,
        work_dir=tmp_path / "work" / step_id,
    )


@pytest.mark.slow
async def test_a_step_with_requirements_runs_in_its_own_cached_environment(
    tmp_path: Path, engine: DuckDBEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "uses_six.py").write_text(SCRIPT)
    cache = tmp_path / "environments"
    builds: list[list[str]] = []
    real_build = python_env._build

    def counting_build(requirements: list[str], env_dir: Path) -> None:
        builds.append(requirements)
        real_build(requirements, env_dir)

    monkeypatch.setattr(python_env, "_build", counting_build)
    executor = PythonScriptExecutor(engine, environments=cache)
    step = PythonStep(id="a", type="python", script="uses_six.py", requirements=["six==1.17.0"])
    first = await executor.execute(step, ctx_for(tmp_path, "a"))
    assert first.outputs["six"] == "1.17.0"
    assert not first.outputs["leaked"]
    assert Path(first.outputs["prefix"]).parent == cache
    # Same requirements (spelled differently): the same environment, not built again.
    again = step.model_copy(update={"id": "b", "requirements": ["six ==1.17.0"]})
    second = await executor.execute(again, ctx_for(tmp_path, "b"))
    assert second.outputs["prefix"] == first.outputs["prefix"]
    assert len(builds) == 1
    assert json.loads(json.dumps(second.outputs))["six"] == "1.17.0"


@pytest.mark.slow
def test_two_steps_needing_the_same_environment_at_once_build_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[list[str]] = []
    real_build = python_env._build

    def counting_build(requirements: list[str], env_dir: Path) -> None:
        builds.append(requirements)
        real_build(requirements, env_dir)

    monkeypatch.setattr(python_env, "_build", counting_build)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                python_env.ensure_environment(["six==1.17.0"], tmp_path / "envs")
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 3 and len(set(results)) == 1
    assert results[0].exists()
    assert len(builds) == 1
    assert sorted(p.name for p in (tmp_path / "envs").iterdir() if p.is_dir()) == [
        results[0].parent.parent.name
    ]


@pytest.mark.parametrize(
    ("requirement", "phrase"),
    [
        ("not a requirement!", "not a requirement"),
        ("evil @ https://example.com/evil.whl", "direct URL requirements are not allowed"),
        ("-e .", "not a requirement"),
    ],
)
def test_bad_requirements_are_reported_with_paths(
    tmp_path: Path, requirement: str, phrase: str
) -> None:
    (tmp_path / "s.py").write_text("")
    doc = {
        "name": "p",
        "steps": [{"id": "s", "type": "python", "script": "s.py", "requirements": [requirement]}],
    }
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(doc, source_dir=tmp_path)
    problems = [str(p) for p in info.value.problems]
    assert any(p.startswith("steps[0].requirements[0]: ") and phrase in p for p in problems)
