"""Templates: binds instead of text in SQL, one rendering pass, a sandbox, strict names."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from schemas.run import RunContext
from schemas.sql_templates import render_sql
from schemas.templating import (
    TemplateProblem,
    check_template,
    render_text,
    renders_in_bounded_time,
)

INJECTION = "'; DROP TABLE t; --"


def context(**params: Any) -> RunContext:
    moment = datetime(2024, 1, 31, tzinfo=UTC)
    return RunContext(
        pipeline="p",
        run_id="default/p/2024-01-31",
        logical_date=moment,
        data_interval_start=moment,
        data_interval_end=datetime(2024, 2, 1, tzinfo=UTC),
        params=params,
    )


# --- render_sql -------------------------------------------------------------------------------


def test_render_sql_turns_expressions_into_binds() -> None:
    text, binds = render_sql(
        "SELECT * FROM t WHERE region = {{ params.region }} AND day = {{ ds }}",
        context(region="EU"),
    )
    assert text == "SELECT * FROM t WHERE region = $lam_0 AND day = $lam_1"
    assert binds == {"lam_0": "EU", "lam_1": "2024-01-31"}


def test_render_sql_datetimes_are_bound_as_datetimes() -> None:
    _, binds = render_sql("SELECT {{ logical_date }}", context())
    assert binds == {"lam_0": datetime(2024, 1, 31, tzinfo=UTC)}
    assert type(binds["lam_0"]) is datetime


def test_date_params_bind_as_iso_text_that_compares_with_dates() -> None:
    # resolve_params gives date params as ISO text (run params travel as JSON).
    text, binds = render_sql(
        "SELECT count(*) FROM t WHERE day = {{ params.d }}", context(d="2024-01-01")
    )
    assert binds == {"lam_0": "2024-01-01"}
    with duckdb.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t AS SELECT DATE '2024-01-01' AS day")
        assert connection.execute(text, binds).fetchall() == [(1,)]


def test_injection_attempt_stays_a_bind_value() -> None:
    text, binds = render_sql("SELECT {{ params.name }} AS v", context(name=INJECTION))
    assert text == "SELECT $lam_0 AS v"
    assert binds == {"lam_0": INJECTION}
    with duckdb.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t AS SELECT 1 AS x")
        assert connection.execute(text, binds).fetchall() == [(INJECTION,)]
        assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_template_looking_value_is_not_rendered_again() -> None:
    text, binds = render_sql("SELECT {{ params.x }}", context(x="{{ 7*7 }}"))
    assert binds == {"lam_0": "{{ 7*7 }}"}
    assert "49" not in text
    assert render_text("v={{ params.x }}", context(x="{{ 7*7 }}")) == "v={{ 7*7 }}"


def test_render_sql_refuses_non_scalar_values() -> None:
    with pytest.raises(TemplateProblem, match="scalars"):
        render_sql("SELECT {{ params }}", context(a=1))


# --- render_text ------------------------------------------------------------------------------


def test_render_text_formats_run_values() -> None:
    rendered = render_text(
        "{{ ds }} {{ logical_date }} {{ run_id }} {{ params.n + 1 }}", context(n=1)
    )
    assert rendered == "2024-01-31 2024-01-31T00:00:00+00:00 default/p/2024-01-31 2"
    assert render_text("no template", context()) == "no template"


# --- sandbox and strictness -------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ params.__class__ }}",
        "{{ ds.format.__globals__ }}",
    ],
)
def test_sandbox_blocks_attribute_escapes(source: str) -> None:
    with pytest.raises(TemplateProblem):
        render_text(source, context())
    with pytest.raises(TemplateProblem):
        render_sql(f"SELECT {source}", context())


@pytest.mark.parametrize("source", ["{{ params.missing }}", "{{ nope }}", "{{ params.a.b.c }}"])
def test_undefined_names_are_errors(source: str) -> None:
    with pytest.raises(TemplateProblem, match="template error"):
        render_text(source, context(a="x"))
    with pytest.raises(TemplateProblem, match="template error"):
        render_sql(f"SELECT {source}", context(a="x"))


def test_runtime_errors_become_template_problems() -> None:
    for source in ("{{ 1/0 }}", "{{ 'a' - 1 }}", "{{ params.x[5] }}"):
        with pytest.raises(TemplateProblem, match="template error"):
            render_text(source, context(x=[1]))


# --- check_template ---------------------------------------------------------------------------


def test_check_template_accepts_declared_names() -> None:
    source = (
        "{{ params.region }} {{ params['day'] }} {{ ds }} {{ data_interval_start }}"
        "{% for c in ['a', 'b'] %}{{ c }}{{ loop.index }}{% endfor %}{% set y = 1 %}{{ y }}"
    )
    assert check_template(source, {"region", "day"}) == []
    assert check_template("plain text", set()) == []


def test_check_template_reports_unknown_names_and_params() -> None:
    problems = check_template("{{ params.regin }} {{ nope }} {{ params['x'] }}", {"region"})
    assert problems == [
        "unknown template variable 'nope' (available: data_interval_end, data_interval_start, "
        "ds, logical_date, params, replay, run_id, steps)",
        "unknown param 'regin' in template (declare it under params:)",
        "unknown param 'x' in template (declare it under params:)",
    ]


def test_check_template_reports_syntax_errors() -> None:
    [problem] = check_template("{{ params.x ", {"x"})
    assert problem.startswith("template syntax error:")
    [problem] = check_template("{% if %}", set())
    assert problem.startswith("template syntax error:")


def test_check_template_refuses_includes() -> None:
    assert check_template("{% include 'other.sql' %}", set()) == [
        "templates cannot include, import or extend other templates"
    ]


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a'|center(500000000) }}",
        "{{ 9**99999 }}",
        "{{ 'x' * 500000000 }}",
        "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        "{{ " + "9" * 5000 + " }}",
    ],
)
def test_check_template_never_evaluates_the_template(source: str) -> None:
    start = time.perf_counter()
    problems = check_template(source, set())
    assert time.perf_counter() - start < 1.0
    assert all(isinstance(p, str) for p in problems)


def test_renders_in_bounded_time() -> None:
    assert renders_in_bounded_time("SELECT {{ params.x|upper }} {% if params.y %}1{% endif %}")
    assert renders_in_bounded_time("SELECT {{ params.n / 2 }} {{ ds ~ '-x' }}")
    for source in (
        "{% for i in range(10) %}{% endfor %}",
        "{% macro m() %}{% endmacro %}",
        "{% set x = 'a' %}",
        "{{ 'a' * 3 }}",
        "{{ 2 ** 3 }}",
        "{{ '%5d' % 1 }}",
        "{{ 'a'|center(9) }}",
        "{{ range(3) }}",
    ):
        assert not renders_in_bounded_time(source), source
