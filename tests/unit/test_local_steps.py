"""`local:` in step definitions: defaults, the short timeout a local step gets, and the
path-precise problems for what a local step cannot do."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from schemas.loading import validate_pipeline
from schemas.pipeline import LOCAL_STEP_MAX_TIMEOUT, PipelineDefinition
from tests.unit.test_loading import has, problems_in, steps_doc


def load(*steps: dict[str, Any]) -> PipelineDefinition:
    return validate_pipeline(steps_doc(*steps), source_dir=Path("."))


def test_noop_is_local_by_default_other_types_are_not() -> None:
    definition = load(
        {"id": "join", "type": "noop"},
        {"id": "q", "type": "sql", "sql": "SELECT 1"},
        {"id": "fast", "type": "sql", "sql": "SELECT 1", "local": True},
        {"id": "slow_join", "type": "noop", "local": False},
    )
    assert [s.runs_local for s in definition.steps] == [True, False, True, False]


def test_a_local_step_without_timeout_gets_the_bound_and_round_trips() -> None:
    definition = load(
        {"id": "join", "type": "noop"},
        {"id": "fast", "type": "sql", "sql": "SELECT 1", "local": True, "timeout": "2s"},
        {"id": "q", "type": "sql", "sql": "SELECT 1"},
        {"id": "slow_join", "type": "noop", "local": False},
    )
    hour = timedelta(hours=1)
    timeouts = [s.timeout for s in definition.steps]
    assert timeouts == [LOCAL_STEP_MAX_TIMEOUT, timedelta(seconds=2), hour, hour]
    again = validate_pipeline(definition.model_dump(mode="json"), source_dir=Path("."))
    assert again == definition


def test_a_local_step_cannot_heartbeat_or_run_long() -> None:
    problems = problems_in(
        steps_doc(
            {"id": "join", "type": "noop", "timeout": "1h"},
            {"id": "q", "type": "sql", "sql": "SELECT 1", "local": True, "timeout": "11s"},
            {"id": "hb", "type": "sql", "sql": "SELECT 1", "local": True,
             "heartbeat_timeout": "5s"},
            {"id": "fine", "type": "sql", "sql": "SELECT 1", "local": False, "timeout": "1h",
             "heartbeat_timeout": "5s"},
            {"id": "undo", "type": "noop", "local": False,
             "compensate": {"id": "u", "type": "noop", "heartbeat_timeout": "1s"}},
        ),
        Path("."),
    )  # fmt: skip
    assert has(problems, "steps[0].timeout", "must finish within 10s ('noop' steps run local")
    assert has(problems, "steps[0].timeout", "set local: false")
    assert has(problems, "steps[1].timeout", "must finish within 10s (local: true), got 11s")
    assert has(problems, "steps[2].heartbeat_timeout", "a local step cannot heartbeat")
    assert has(problems, "steps[4].compensate.heartbeat_timeout", "cannot heartbeat")
    assert len(problems) == 4, problems


def test_local_must_be_a_boolean() -> None:
    problems = problems_in(steps_doc({"id": "a", "type": "noop", "local": "maybe"}), Path("."))
    assert any(p.startswith("steps[0].local: ") for p in problems), problems
