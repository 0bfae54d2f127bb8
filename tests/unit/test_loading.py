"""Loading definitions: document limits, path-precise problems, params resolution."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.documents import MAX_DOCUMENT_BYTES
from schemas.loading import (
    PipelineValidationError,
    Problem,
    load_pipeline_file,
    load_pipeline_text,
    parse_document,
    resolve_params,
    validate_pipeline,
)
from schemas.pipeline import (
    STEP_TYPES,
    OnFailure,
    ParamType,
    PipelineDefinition,
    PythonStep,
    SqlStep,
)

VALID = """
name: daily-sales
description: Sales per region
params:
  region: EU
  limit: 10
  ratio: {type: number, default: 0.5}
  full: {type: boolean, default: false}
  day: 2024-01-31
  since: {type: date, default: "2024-01-01"}
  owner: {type: string, required: true}
max_parallelism: 4
timeout: 2h
on_failure: compensate
steps:
  - id: extract
    type: sql
    sql: |
      CREATE OR REPLACE TABLE raw AS
      SELECT * FROM range(10) WHERE {{ params.full }} OR range < {{ params.limit }}
    retry: {max_attempts: 5, initial_interval: 2s, maximum_interval: 1m}
    timeout: 30m
    compensate:
      id: drop_raw
      type: sql
      sql: DROP TABLE IF EXISTS raw
  - id: score
    type: python
    script: scripts/score.py
    args: ["--day", "{{ ds }}", "--region={{ params.region }}"]
    env: {REGION: "{{ params.region }}", MODE: fast}
    inputs: [raw, main.raw]
    depends_on: [extract]
    heartbeat_timeout: 20s
  - id: done
    type: noop
    depends_on: [extract, score]
"""


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "score.py").write_text("print('ok')\n")
    return tmp_path


def problems_of(call: Callable[[], Any]) -> list[Problem]:
    with pytest.raises(PipelineValidationError) as info:
        call()
    return info.value.problems


def problems_in(data: dict[str, Any], source_dir: Path) -> list[str]:
    return [str(p) for p in problems_of(lambda: validate_pipeline(data, source_dir=source_dir))]


def steps_doc(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "p", **top, "steps": list(steps)}


def has(problems: list[str], path: str, phrase: str) -> bool:
    return any(p.startswith(f"{path}: ") and phrase in p for p in problems)


# --- valid definitions ------------------------------------------------------------------------


def test_valid_pipeline_loads_with_every_field(source_dir: Path) -> None:
    pipeline = load_pipeline_text(VALID, source_dir=source_dir)
    assert pipeline.name == "daily-sales"
    assert [s.id for s in pipeline.steps] == ["extract", "score", "done"]
    extract, score, _ = pipeline.steps
    assert isinstance(extract, SqlStep) and isinstance(score, PythonStep)
    assert extract.retry.max_attempts == 5
    assert extract.retry.initial_interval == timedelta(seconds=2)
    assert extract.timeout == timedelta(minutes=30)
    assert extract.compensate is not None and extract.compensate.id == "drop_raw"
    assert score.heartbeat_timeout == timedelta(seconds=20)
    assert pipeline.timeout == timedelta(hours=2)
    assert pipeline.on_failure is OnFailure.COMPENSATE
    assert pipeline.params["day"].default == date(2024, 1, 31)


def test_valid_pipeline_round_trips_through_json(source_dir: Path) -> None:
    pipeline = load_pipeline_text(VALID, source_dir=source_dir)
    dumped = pipeline.model_dump(mode="json")
    again = load_pipeline_text(json.dumps(dumped), source_dir=source_dir, fmt="json")
    # JSON has no dates: a date default comes back as its ISO text (resolve_params checks it).
    assert again.model_dump(mode="json") == dumped
    assert again.steps == pipeline.steps


def test_load_pipeline_file_yaml_and_json(source_dir: Path) -> None:
    (source_dir / "pipeline.yaml").write_text(VALID)
    from_yaml = load_pipeline_file(source_dir / "pipeline.yaml")
    dumped = from_yaml.model_dump(mode="json")
    (source_dir / "pipeline.json").write_text(json.dumps(dumped))
    assert load_pipeline_file(source_dir / "pipeline.json").model_dump(mode="json") == dumped


def test_load_pipeline_file_resolves_scripts_next_to_the_file(
    source_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (source_dir / "pipeline.yaml").write_text(VALID)
    monkeypatch.chdir(source_dir.parent)  # a relative path, from another directory
    pipeline = load_pipeline_file(Path(source_dir.name) / "pipeline.yaml")
    assert pipeline.steps[1].id == "score"  # its script resolved to source_dir/scripts/


def test_plain_anchors_and_merge_keys_are_allowed(tmp_path: Path) -> None:
    text = """
name: anchors
steps:
  - &base {id: a, type: noop, retry: &retry {max_attempts: 2}}
  - {<<: *base, id: b, retry: *retry}
"""
    pipeline = load_pipeline_text(text, source_dir=tmp_path)
    assert [s.id for s in pipeline.steps] == ["a", "b"]
    assert pipeline.steps[1].retry.max_attempts == 2


# --- problems: format and completeness --------------------------------------------------------


def test_problem_and_error_text() -> None:
    problem = Problem("steps[2].depends_on", "unknown step 'lod'")
    assert str(problem) == "steps[2].depends_on: unknown step 'lod'"
    error = PipelineValidationError([problem, Problem("<document>", "x")])
    assert str(error).splitlines() == ["steps[2].depends_on: unknown step 'lod'", "<document>: x"]


def test_every_problem_is_reported_at_once(source_dir: Path) -> None:
    data = steps_doc(
        {"id": "a", "type": "sql", "sql": "SELEC 1"},
        {"id": "b", "type": "foo"},
        {"id": "c", "type": "noop", "depends_on": ["lod"]},
        {"id": "d", "type": "python", "script": "missing.py"},
        {"id": "a", "type": "noop", "retry": {"max_attempts": 0}},
        name="Bad Name",
    )
    problems = problems_in(data, source_dir)
    assert has(problems, "name", "use lowercase letters")
    assert has(problems, "steps[0].sql", "SQL does not parse")
    assert has(problems, "steps[1].type", "unknown step type 'foo'")
    assert has(problems, "steps[2].depends_on", "unknown step 'lod'")
    assert has(problems, "steps[3].script", "no such file 'missing.py'")
    assert has(problems, "steps[4].retry.max_attempts", "greater than or equal to 1")
    assert has(problems, "steps[4].id", "duplicate step id 'a' (also steps[0])")
    assert len(problems) == 7


def test_problems_are_in_document_order(source_dir: Path) -> None:
    data = steps_doc(
        {"id": "a", "type": "noop", "depends_on": ["zz"]},
        {"id": "b", "type": "nope"},
        bogus=1,
    )
    problems = problems_in(data, source_dir)
    assert [p.split(":")[0] for p in problems] == ["bogus", "steps[0].depends_on", "steps[1].type"]


# --- document limits --------------------------------------------------------------------------

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def timed_problems(call: Callable[[], Any]) -> tuple[list[str], float]:
    start = time.perf_counter()
    problems = problems_of(call)
    return [str(p) for p in problems], time.perf_counter() - start


def test_billion_laughs_is_refused_quickly() -> None:
    problems, elapsed = timed_problems(lambda: parse_document(BILLION_LAUGHS))
    assert problems == ["<document>: aliases expand the document to more than 100000 values"]
    assert elapsed < 1.0


def test_deep_yaml_nesting_is_refused_quickly() -> None:
    for text in (
        "[" * 10_000 + "]" * 10_000,
        "- " * 10_000 + "x",
        "{a: " * 10_000 + "1" + "}" * 10_000,
    ):
        problems, elapsed = timed_problems(lambda text=text: parse_document(text))
        assert len(problems) == 1
        assert problems[0].startswith("<document>: document nests deeper than 64 levels (line 1,")
        assert elapsed < 1.0


def test_deep_json_nesting_is_refused_quickly() -> None:
    for depth in (70, 100_000):
        text = "[" * depth + "]" * depth
        problems, elapsed = timed_problems(lambda text=text: parse_document(text, "json"))
        assert problems == ["<document>: document nests deeper than 64 levels"]
        assert elapsed < 1.0


def test_nesting_within_the_limit_is_accepted() -> None:
    nested: list[Any] = []
    for _ in range(60):
        nested = [nested]
    assert parse_document("a: " + "[" * 61 + "]" * 61) == {"a": nested}


def test_recursive_alias_is_refused() -> None:
    problems = [str(p) for p in problems_of(lambda: parse_document("a: &a [1, *a]"))]
    assert problems == ["<document>: recursive alias (line 1, column 4)"]


def test_too_many_values_are_refused() -> None:
    problems, _ = timed_problems(lambda: parse_document("[" + "1," * 100_001 + "1]"))
    assert problems == ["<document>: document has more than 100000 values"]
    json_problems, _ = timed_problems(lambda: parse_document("[" + "1," * 100_001 + "1]", "json"))
    assert json_problems == problems


def test_document_over_one_mebibyte_is_refused_before_parsing(tmp_path: Path) -> None:
    # Multi-byte characters: the limit is on UTF-8 bytes, not characters.
    text = "a: '" + "é" * (MAX_DOCUMENT_BYTES // 2) + "'"
    assert len(text) < MAX_DOCUMENT_BYTES
    for call in (lambda: parse_document(text), lambda: parse_document(text, "json")):
        assert [str(p) for p in problems_of(call)] == [
            "<document>: document is larger than 1 MiB (1048576 bytes)"
        ]
    (tmp_path / "big.yaml").write_text(text)
    problems = problems_of(lambda: load_pipeline_file(tmp_path / "big.yaml"))
    assert "larger than 1 MiB" in problems[0].message


def test_yaml_syntax_error_has_line_and_column() -> None:
    problems = problems_of(lambda: parse_document("name: x\nsteps: [a, b\n  - c: d: e\n"))
    assert len(problems) == 1
    assert problems[0].path == "<document>"
    assert problems[0].message.startswith("invalid YAML (line 3, column ")


def test_json_syntax_error_has_line_and_column() -> None:
    problems = problems_of(lambda: parse_document('{"name": "x",\n "steps": [,]}', "json"))
    assert [str(p) for p in problems] == [
        "<document>: invalid JSON (line 2, column 12): Expecting value"
    ]


def test_yaml_python_tags_are_refused() -> None:
    problems = problems_of(lambda: parse_document("a: !!python/object/apply:os.system ['true']"))
    assert "could not determine a constructor" in problems[0].message


def test_duplicate_keys_are_refused() -> None:
    problems = problems_of(lambda: parse_document("name: a\nsql: x\nsql: y\n"))
    assert [str(p) for p in problems] == ["<document>: duplicate key 'sql' (line 3, column 1)"]
    json_problems = problems_of(lambda: parse_document('{"a": 1, "a": 2}', "json"))
    assert [str(p) for p in json_problems] == ["<document>: duplicate key 'a'"]


def test_several_yaml_documents_are_refused() -> None:
    problems = problems_of(lambda: parse_document("a: 1\n---\nb: 2\n"))
    assert problems[0].message == (
        "invalid YAML (line 2, column 1): expected a single document in the stream, "
        "but found another document"
    )


def test_overlong_integer_is_a_problem_not_a_crash() -> None:
    problems = problems_of(lambda: parse_document("a: " + "9" * 5000))
    assert problems[0].message.startswith("invalid value:")


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just text", "string"), ("", "null")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    problems = problems_of(lambda: load_pipeline_text(text, source_dir=tmp_path))
    assert [str(p) for p in problems] == [f"<document>: top level must be a mapping, got {kind}"]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    problems = problems_of(lambda: load_pipeline_file(tmp_path / "absent.yaml"))
    assert problems[0].message.startswith("cannot read")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    problems = problems_of(lambda: load_pipeline_file(tmp_path / "latin1.yaml"))
    assert problems[0].message == "document is not UTF-8 (bad byte at offset 9)"


def test_validate_pipeline_bounds_already_parsed_data(tmp_path: Path) -> None:
    data: Any = {"name": "p", "steps": []}
    for _ in range(100):
        data = {"nested": data}
    problems = problems_of(lambda: validate_pipeline(data, source_dir=tmp_path))
    assert [str(p) for p in problems] == ["<document>: document nests deeper than 64 levels"]


# --- structural problems (pydantic) -----------------------------------------------------------


def test_unknown_step_type(tmp_path: Path) -> None:
    problems = problems_in(
        steps_doc({"id": "a", "type": "noop"}, {"id": "b", "type": "foo"}), tmp_path
    )
    assert problems == [
        f"steps[1].type: unknown step type 'foo' (expected one of: {', '.join(STEP_TYPES)})"
    ]


def test_missing_step_type(tmp_path: Path) -> None:
    problems = problems_in(steps_doc({"id": "a", "sql": "select 1"}), tmp_path)
    expected = ", ".join(STEP_TYPES)
    assert problems == [f"steps[0].type: step type is missing (expected one of: {expected})"]


def test_unknown_field_suggests_the_right_one(tmp_path: Path) -> None:
    problems = problems_in(
        steps_doc({"id": "a", "type": "sql", "sql": "select 1", "sqll": "x"}), tmp_path
    )
    assert problems == ["steps[0].sqll: unknown field (did you mean 'sql'?)"]
    problems = problems_in(steps_doc({"id": "a", "type": "noop"}, max_paralelism=2), tmp_path)
    assert problems == ["max_paralelism: unknown field (did you mean 'max_parallelism'?)"]


def test_nested_field_paths_strip_the_union_tag(tmp_path: Path) -> None:
    step = {
        "id": "a",
        "type": "sql",
        "sql": "select 1",
        "retry": {"max_attempts": 0},
        "compensate": {"id": "undo", "type": "python", "script": 5},
    }
    problems = problems_in(steps_doc(step), tmp_path)
    assert has(problems, "steps[0].retry.max_attempts", "greater than or equal to 1, got integer 0")
    assert has(problems, "steps[0].compensate.script", "expected a string, got integer 5")
    assert len(problems) == 2


def test_bad_duration_uses_the_parse_duration_message(tmp_path: Path) -> None:
    step = {"id": "a", "type": "noop", "timeout": "5x", "retry": {"initial_interval": "soon"}}
    problems = problems_in(steps_doc(step), tmp_path)
    assert problems == [
        "steps[0].retry.initial_interval: invalid duration 'soon': use a number of seconds or "
        "e.g. '30s', '5m', '1h30m', 'PT5M'",
        "steps[0].timeout: invalid duration '5x': use a number of seconds or e.g. "
        "'30s', '5m', '1h30m', 'PT5M'",
    ]


def test_missing_required_fields(tmp_path: Path) -> None:
    problems = problems_in({"steps": [{"type": "sql", "id": "a"}]}, tmp_path)
    assert problems == [
        "name: required field is missing",
        "steps[0].sql: required field is missing",
    ]


def test_steps_must_be_a_non_empty_list(tmp_path: Path) -> None:
    assert has(problems_in({"name": "p", "steps": []}, tmp_path), "steps", "at least 1 item")
    assert problems_in({"name": "p", "steps": "a"}, tmp_path) == [
        "steps: expected a list, got string 'a'"
    ]
    assert problems_in(steps_doc("a"), tmp_path) == ["steps[0]: expected a mapping, got string 'a'"]


def test_max_parallelism_bounds(tmp_path: Path) -> None:
    problems = problems_in(steps_doc({"id": "a", "type": "noop"}, max_parallelism=0), tmp_path)
    assert has(problems, "max_parallelism", "greater than or equal to 1")


# --- the step graph ---------------------------------------------------------------------------


def test_duplicate_step_ids(tmp_path: Path) -> None:
    steps = [{"id": i, "type": "noop"} for i in ("x", "y", "z", "x")]
    assert problems_in(steps_doc(*steps), tmp_path) == [
        "steps[3].id: duplicate step id 'x' (also steps[0])"
    ]


def test_unknown_dependency_with_suggestion(tmp_path: Path) -> None:
    steps = [
        {"id": "extract", "type": "noop"},
        {"id": "load", "type": "noop"},
        {"id": "report", "type": "noop", "depends_on": ["lod", "zzz"]},
    ]
    assert problems_in(steps_doc(*steps), tmp_path) == [
        "steps[2].depends_on: unknown step 'lod' (did you mean 'load'?)",
        "steps[2].depends_on: unknown step 'zzz'",
    ]


def test_self_dependency(tmp_path: Path) -> None:
    problems = problems_in(steps_doc({"id": "a", "type": "noop", "depends_on": ["a"]}), tmp_path)
    assert problems == ["steps[0].depends_on: step 'a' depends on itself"]


def test_dependency_cycle_is_shown_in_document_order(tmp_path: Path) -> None:
    steps = [
        {"id": "a", "type": "noop", "depends_on": ["c"]},
        {"id": "b", "type": "noop", "depends_on": ["a"]},
        {"id": "c", "type": "noop", "depends_on": ["b"]},
        {"id": "d", "type": "noop"},
    ]
    assert problems_in(steps_doc(*steps), tmp_path) == ["steps: dependency cycle a -> b -> c -> a"]


def test_independent_cycles_are_all_reported(tmp_path: Path) -> None:
    steps = [
        {"id": "a", "type": "noop", "depends_on": ["b"]},
        {"id": "b", "type": "noop", "depends_on": ["a"]},
        {"id": "c", "type": "noop", "depends_on": ["d"]},
        {"id": "d", "type": "noop", "depends_on": ["c"]},
    ]
    problems = problems_in(steps_doc(*steps), tmp_path)
    assert sorted(problems) == [
        "steps: dependency cycle a -> b -> a",
        "steps: dependency cycle c -> d -> c",
    ]


def test_graph_checks_run_even_when_steps_are_invalid(tmp_path: Path) -> None:
    steps = [
        {"id": "a", "type": "sql", "depends_on": ["b"]},  # missing sql
        {"id": "b", "type": "bogus", "depends_on": ["a", "nope"]},
        {"id": "a", "type": "noop", "extra": 1},
    ]
    problems = problems_in(steps_doc(*steps), tmp_path)
    assert has(problems, "steps[0].sql", "required field is missing")
    assert has(problems, "steps[1].type", "unknown step type 'bogus'")
    assert has(problems, "steps[1].depends_on", "unknown step 'nope'")
    assert has(problems, "steps[2].id", "duplicate step id 'a'")
    assert has(problems, "steps[2].extra", "unknown field")
    assert "steps: dependency cycle a -> b -> a" in problems


# --- compensation -----------------------------------------------------------------------------


def test_compensation_step_rules(tmp_path: Path) -> None:
    steps = [
        {
            "id": "a",
            "type": "noop",
            "compensate": {"id": "undo", "type": "noop", "depends_on": ["a"]},
        },
        {
            "id": "b",
            "type": "noop",
            "compensate": {
                "id": "undo_b",
                "type": "noop",
                "compensate": {"id": "undo_undo", "type": "noop"},
            },
        },
        {"id": "c", "type": "noop", "compensate": {"id": "a", "type": "noop"}},
        {"id": "d", "type": "noop", "compensate": {"id": "undo", "type": "noop"}},
    ]
    assert problems_in(steps_doc(*steps), tmp_path) == [
        "steps[0].compensate.depends_on: a compensation step cannot have depends_on: "
        "it runs when its step is undone",
        "steps[1].compensate.compensate: a compensation step cannot have its own compensate",
        "steps[2].compensate.id: id 'a' is already used by steps[0]",
        "steps[3].compensate.id: id 'undo' is already used by steps[0].compensate",
    ]


# --- templates and SQL ------------------------------------------------------------------------


def test_template_problems_have_field_paths(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("")
    steps = [
        {"id": "a", "type": "sql", "sql": "select {{ params.regin }}"},
        {
            "id": "b",
            "type": "python",
            "script": "job.py",
            "args": ["{{ ds }}", "{{ nope }}"],
            "env": {"REGION": "{{ params.regio }}", "OK": "{{ params.region }}"},
        },
        {"id": "c", "type": "sql", "sql": "select {{ params.region "},
    ]
    problems = problems_in(steps_doc(*steps, params={"region": "EU"}), tmp_path)
    assert problems == [
        "steps[0].sql: unknown param 'regin' in template (declare it under params:)",
        "steps[1].args[1]: unknown template variable 'nope' (available: data_interval_end, "
        "data_interval_start, ds, logical_date, params, replay, run_id, steps)",
        "steps[1].env.REGION: unknown param 'regio' in template (declare it under params:)",
        problems[3],
    ]
    assert problems[3].startswith("steps[2].sql: template syntax error:")


def test_sql_that_does_not_parse(tmp_path: Path) -> None:
    sql = "SELECT 1;\nSELECT * FRM t"
    assert problems_in(steps_doc({"id": "a", "type": "sql", "sql": sql}), tmp_path) == [
        "steps[0].sql: SQL does not parse: Invalid expression / Unexpected token "
        "(line 2, column 14)"
    ]


def test_duckdb_syntax_sqlglot_misreads_is_accepted(tmp_path: Path) -> None:
    # sqlglot reads `range < 5` as the start of a type; DuckDB's own parser has the last word.
    sql = "SELECT * FROM range(10) WHERE range < 5"
    validate_pipeline(steps_doc({"id": "a", "type": "sql", "sql": sql}), source_dir=tmp_path)


def test_sql_without_statements(tmp_path: Path) -> None:
    problems = problems_in(steps_doc({"id": "a", "type": "sql", "sql": " ; -- nothing"}), tmp_path)
    assert problems == ["steps[0].sql: contains no SQL statement"]


def test_templated_sql_is_parsed_with_binds(tmp_path: Path) -> None:
    sql = (
        "SELECT * FROM t WHERE region = {{ params.region }} AND day = {{ ds }}"
        "{% if params.full %} AND 1 = 1{% endif %}"
    )
    data = steps_doc(
        {"id": "a", "type": "sql", "sql": sql},
        params={"region": {"required": True}, "full": True},
    )
    assert validate_pipeline(data, source_dir=tmp_path).steps[0].id == "a"


def test_sql_template_render_error_is_a_problem(tmp_path: Path) -> None:
    problems = problems_in(
        steps_doc({"id": "a", "type": "sql", "sql": "select {{ 1/0 }}"}), tmp_path
    )
    assert problems == ["steps[0].sql: template error: division by zero"]


def test_sql_templates_that_could_render_forever_are_not_rendered(tmp_path: Path) -> None:
    sql = (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
        "select {{ 'x' * 100000000 }} {{ 'a'|center(500000000) }}"
    )
    start = time.perf_counter()
    validate_pipeline(steps_doc({"id": "a", "type": "sql", "sql": sql}), source_dir=tmp_path)
    assert time.perf_counter() - start < 1.0


# --- python steps -----------------------------------------------------------------------------


def python_step(script: str, **extra: Any) -> dict[str, Any]:
    return {"id": "py", "type": "python", "script": script, **extra}


def test_script_must_be_relative(tmp_path: Path) -> None:
    assert problems_in(steps_doc(python_step("/etc/hostname")), tmp_path) == [
        "steps[0].script: must be a path relative to the pipeline directory, got '/etc/hostname'"
    ]


def test_script_must_stay_inside_the_pipeline_directory(tmp_path: Path) -> None:
    inside = tmp_path / "pipeline"
    inside.mkdir()
    (tmp_path / "outside.py").write_text("")
    assert problems_in(steps_doc(python_step("../outside.py")), inside) == [
        "steps[0].script: path escapes the pipeline directory"
    ]


def test_script_symlink_out_of_the_directory_is_an_escape(tmp_path: Path) -> None:
    inside = tmp_path / "pipeline"
    inside.mkdir()
    (tmp_path / "outside.py").write_text("")
    (inside / "link.py").symlink_to(tmp_path / "outside.py")
    assert problems_in(steps_doc(python_step("link.py")), inside) == [
        "steps[0].script: path escapes the pipeline directory"
    ]


def test_script_must_exist(tmp_path: Path) -> None:
    (tmp_path / "dir.py").mkdir()
    for script in ("x.py", "dir.py"):
        assert problems_in(steps_doc(python_step(script)), tmp_path) == [
            f"steps[0].script: no such file '{script}' (relative to {tmp_path.resolve()})"
        ]


def test_script_inside_and_templated_scripts_pass(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "job.py").write_text("")
    steps = [python_step("sub/../sub/job.py"), python_step("{{ params.region }}.py", id="b")]
    validate_pipeline(steps_doc(*steps, params={"region": "eu"}), source_dir=tmp_path)


def test_inputs_must_be_table_names(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("")
    # Any name DuckDB accepts quoted is fine (it is always quoted); empty parts and NUL are not.
    ok = ["sales", "main.sales", "a b", "x;drop", "a.b.c", "städte"]
    bad = ["", "a..b", "a\x00b", "a.b.c.d"]
    step = python_step("job.py", inputs=ok + bad)
    assert problems_in(steps_doc(step), tmp_path) == [
        f"steps[0].inputs[{i}]: {name!r} is not a table name (name or schema.name, no NUL)"
        for i, name in enumerate(bad, start=len(ok))
    ]


# --- params -----------------------------------------------------------------------------------


def test_param_names_must_be_identifiers(tmp_path: Path) -> None:
    data = steps_doc({"id": "a", "type": "noop"}, params={"bad-name": 1, "ok_name": 2, "9x": "a"})
    assert problems_in(data, tmp_path) == [
        "params.bad-name: param name must be an identifier (letters, digits and _)",
        'params["9x"]: param name must be an identifier (letters, digits and _)',
    ]


def test_param_defaults_must_match_the_declared_type(tmp_path: Path) -> None:
    params = {
        "n": {"type": "integer", "default": "ten"},
        "r": {"type": "number", "default": True},
        "b": {"type": "boolean", "default": "yes"},
        "d": {"type": "date", "default": "31/01/2024"},
        "s": {"type": "string", "default": 5},
        "l": {"type": "list", "default": "eu"},
        "m": {"default": {"a": 1}},
        "t": {"type": "decimal"},
        "ok_date": {"type": "date", "default": "2024-01-31"},
    }
    problems = problems_in(steps_doc({"id": "a", "type": "noop"}, params=params), tmp_path)
    assert problems == [
        "params.n.default: expected an integer, got string 'ten'",
        "params.r.default: expected a number, got boolean True",
        "params.b.default: expected a boolean (true/false/yes/no/1/0), got string 'yes'",
        "params.d.default: expected a date (YYYY-MM-DD), got string '31/01/2024'",
        "params.s.default: expected a string, got integer 5",
        "params.l.default: expected a list (JSON, or comma-separated text on the command "
        "line), got string 'eu'",
        "params.m.default: must be a string, number, boolean, date or list",
        problems[7],
    ]
    assert problems[7].startswith("params.t.type: Input should be 'string', 'integer'")


# --- resolve_params ---------------------------------------------------------------------------


def params_pipeline(**params: Any) -> PipelineDefinition:
    return validate_pipeline(
        steps_doc({"id": "a", "type": "noop"}, params=params), source_dir=Path(".")
    )


def test_resolve_params_merges_defaults_and_coerces_text() -> None:
    pipeline = params_pipeline(
        region="EU",
        n=1,
        ratio={"type": "number"},
        flag={"type": "boolean", "default": False},
        day={"type": "date", "default": "2024-01-31"},
        note={"type": "string"},
    )
    assert resolve_params(pipeline, {}) == {
        "region": "EU",
        "n": 1,
        "ratio": None,
        "flag": False,
        "day": "2024-01-31",
        "note": None,
    }
    resolved = resolve_params(
        pipeline, {"n": " 42 ", "ratio": "2.5e1", "flag": "YES", "day": "2023-12-01", "note": "7"}
    )
    assert resolved == {
        "region": "EU",
        "n": 42,
        "ratio": 25.0,
        "flag": True,
        "day": "2023-12-01",
        "note": "7",
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("1", True), ("yes", True), ("False", False), ("0", False), ("no", False)],
)
def test_resolve_params_booleans(text: str, value: bool) -> None:
    assert resolve_params(params_pipeline(flag=False), {"flag": text}) == {"flag": value}


def test_resolve_params_accepts_typed_values_from_json() -> None:
    pipeline = params_pipeline(n=1, ratio=0.5, flag=True, day=date(2024, 1, 1))
    overrides = {"n": 7, "ratio": 3, "flag": False, "day": "2024-02-29"}
    assert resolve_params(pipeline, overrides) == {
        "n": 7,
        "ratio": 3.0,
        "flag": False,
        "day": "2024-02-29",
    }


def test_resolve_params_gives_dates_as_iso_text() -> None:
    # Run params travel through Temporal as JSON: a date is its ISO text everywhere.
    pipeline = params_pipeline(day=date(2024, 1, 1), since={"type": "date", "default": "20240105"})
    assert resolve_params(pipeline, {}) == {"day": "2024-01-01", "since": "2024-01-05"}
    assert resolve_params(pipeline, {"day": " 2024-03-01 ", "since": date(2024, 2, 1)}) == {
        "day": "2024-03-01",
        "since": "2024-02-01",
    }


def test_resolved_params_are_json_serialisable() -> None:
    pipeline = params_pipeline(
        s="text",
        n=1,
        ratio=0.5,
        flag=True,
        day=date(2024, 1, 1),
        unset={"type": "date"},
        regions=["eu", 1],
    )
    from_defaults = resolve_params(pipeline, {})
    from_text = resolve_params(
        pipeline,
        {"s": "x", "n": "2", "ratio": "1e3", "flag": "no", "day": "2024-12-31", "regions": "a,b"},
    )
    assert from_text["regions"] == ["a", "b"] and from_defaults["regions"] == ["eu", 1]
    for resolved in (from_defaults, from_text):
        assert json.loads(json.dumps(resolved)) == resolved
    kinds = {spec.type for spec in pipeline.params.values()}
    assert kinds == set(ParamType)  # every param type is covered


def test_resolve_params_reports_every_problem() -> None:
    pipeline = params_pipeline(
        region="EU", n=1, ratio=0.5, flag=True, day=date(2024, 1, 1), owner={"required": True}
    )
    overrides = {"regoin": "US", "n": "1.5", "ratio": "nan", "flag": "maybe", "day": "2024-02-30"}
    problems = [str(p) for p in problems_of(lambda: resolve_params(pipeline, overrides))]
    assert problems == [
        "params.regoin: unknown param (did you mean 'region'?)",
        "params.n: expected an integer, got string '1.5'",
        "params.ratio: expected a number, got string 'nan'",
        "params.flag: expected a boolean (true/false/yes/no/1/0), got string 'maybe'",
        "params.day: expected a date (YYYY-MM-DD), got string '2024-02-30'",
        "params.owner: required param has no value",
    ]


def test_validation_renders_date_params_as_runs_see_them(tmp_path: Path) -> None:
    # Steps get ISO text, so `.year` would fail at run time: validation says so up front.
    params = {"d": {"type": "date", "default": "2024-01-01"}, "e": {"type": "date"}}
    steps = [
        {"id": "a", "type": "sql", "sql": "SELECT {{ params.d.year }}"},
        {"id": "b", "type": "sql", "sql": "SELECT {{ params.e.year }}"},
    ]
    problems = problems_in(steps_doc(*steps, params=params), tmp_path)
    assert problems == [
        "steps[0].sql: template error: 'str object' has no attribute 'year'",
        "steps[1].sql: template error: 'str object' has no attribute 'year'",
    ]


def test_resolve_params_refuses_booleans_as_numbers() -> None:
    pipeline = params_pipeline(n=1, ratio=0.5)
    problems = [
        str(p) for p in problems_of(lambda: resolve_params(pipeline, {"n": True, "ratio": False}))
    ]
    assert problems == [
        "params.n: expected an integer, got boolean True",
        "params.ratio: expected a number, got boolean False",
    ]


def test_yaml_shorthand_params() -> None:
    pipeline = load_pipeline_text(
        "name: p\nparams: {a: 1, b: 0.5, c: true, d: 2024-01-02, e: text, f: null}\n"
        "steps: [{id: s, type: noop}]\n",
        source_dir=Path("."),
    )
    kinds = {name: spec.type.value for name, spec in pipeline.params.items()}
    assert kinds == {
        "a": "integer",
        "b": "number",
        "c": "boolean",
        "d": "date",
        "e": "string",
        "f": "string",
    }
    assert pipeline.params["f"].required
    assert yaml.safe_load("d: 2024-01-02")["d"] == date(2024, 1, 2)


def test_retry_cap_below_initial_interval_is_refused(source_dir: Path) -> None:
    step = {
        "id": "a",
        "type": "sql",
        "sql": "select 1",
        "retry": {"initial_interval": "1h", "maximum_interval": "1m"},
    }
    problems = problems_in(steps_doc(step), source_dir)
    assert has(problems, "steps[0].retry", "must not be less than initial_interval")


def test_retry_cap_defaults_to_none_so_long_initial_intervals_work(source_dir: Path) -> None:
    step = {"id": "a", "type": "sql", "sql": "select 1", "retry": {"initial_interval": "1h"}}
    pipeline = validate_pipeline(steps_doc(step), source_dir=source_dir)
    assert pipeline.steps[0].retry.maximum_interval is None
