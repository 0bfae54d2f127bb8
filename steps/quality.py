"""`quality` steps: run checks over a table or query, quarantine failing rows, keep results.

Two rounds on the engine. First the measurements, read-only: one shared scan counts every
simple row check (`count(*) FILTER (WHERE ...)`), the row count and the newest timestamps;
checks that need a join or a grouping count on their own; a schema check reads the catalog.
Then the writes, in one transaction where the engine has them: for each failing row check its
quarantine table gets this run's failing rows (replacing those of an earlier attempt), a sample
is read back, and every check's outcome is appended to `<quarantine_schema>.check_results`, the
history `laminar quality history` shows. An `error` check that failed then fails the step,
without retry: the same data would fail the same way.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlglot
from sqlglot import exp

from schemas.dialects import colon_placeholders
from schemas.pipeline import QualityStep
from schemas.quality import FreshnessCheck, RowCountCheck, SchemaCheck
from schemas.sql_templates import render_sql
from steps.base import StepContext, StepError, StepResult
from steps.engines.base import QueryEngine, StatementResult, jsonable
from steps.engines.catalog import EngineCatalog
from steps.quality_sql import (
    Binder,
    CheckCompileError,
    RowCheck,
    count_where,
    counted,
    ident,
    parse_query,
    quarantine_statements,
    row_check,
    sample_where,
    source,
    table_ref,
)

RESULTS_TABLE = "check_results"
_RESULTS_DDL = (
    "CREATE TABLE IF NOT EXISTS results (run_id VARCHAR, pipeline VARCHAR, step_id VARCHAR, "
    "check_name VARCHAR, check_type VARCHAR, severity VARCHAR, status VARCHAR, "
    "failing_rows BIGINT, observed VARCHAR, threshold VARCHAR, logical_date VARCHAR, "
    "checked_at VARCHAR)"
)
_SCHEMA_ROWS = 10_000
SAMPLE_MAX_BYTES = 8 * 1024
"""Per check: samples of many checks share the step result, which goes into history."""


class QualityExecutor:
    def __init__(self, engines: EngineCatalog) -> None:
        self.engines = engines

    async def execute(self, step: QualityStep, ctx: StepContext) -> StepResult:
        engine = self.engines.get(step.engine, step.connection, ctx.secrets)
        binder = Binder(engine.dialect)
        try:
            plan = _plan(step, ctx, binder)
        except CheckCompileError as exc:
            raise StepError(str(exc), error_type="QualityConfigError", retryable=False) from exc
        measured = await engine.run_statements(
            [binder.bound(q) for q in plan.measurements], fetch_rows=_SCHEMA_ROWS, atomic=False
        )
        outcomes = _judge(step, ctx, plan, measured)
        await _write(step, ctx, engine, binder, plan, outcomes)
        errors = [o for o in outcomes if o["status"] == "failed"]
        warnings = [o for o in outcomes if o["status"] == "warned"]
        summary = {
            "checks": outcomes,
            "passed": len(outcomes) - len(errors) - len(warnings),
            "warnings": len(warnings),
            "errors": len(errors),
            "results_table": f"{step.quarantine_schema}.{RESULTS_TABLE}",
        }
        if errors:
            raise StepError(
                f"{len(errors)} quality check(s) failed: "
                + "; ".join(_describe(o) for o in errors),
                error_type="QualityCheckFailed",
                retryable=False,
            )
        quarantined = sum(o.get("failing_rows") or 0 for o in outcomes if o.get("quarantine"))
        return StepResult(rows_affected=quarantined, outputs=summary)


class _Plan:
    def __init__(self) -> None:
        self.measurements: list[exp.Expr] = []
        self.shared_scan: list[tuple[int, str]] = []  # (check index, column alias)
        self.own_count: dict[int, int] = {}  # check index -> measurement index
        self.rows: dict[int, RowCheck] = {}
        self.schema_query: int | None = None


def _plan(step: QualityStep, ctx: StepContext, binder: Binder) -> _Plan:
    dialect = step.source_dialect
    query = None
    if step.query is not None:
        text, binds = render_sql(step.query, ctx.run, ctx.upstream)
        text = colon_placeholders(text, binds)
        binder.values.update(binds)
        query = parse_query(text, dialect, "query")
    src = source(step.table, query)
    plan = _Plan()
    shared: list[exp.Expr] = [exp.alias_(exp.Count(this=exp.Star()), "n")]
    for i, check in enumerate(step.checks):
        if check.ROW_LEVEL:
            row = row_check(check, src, binder, dialect, (step.table, query))
            plan.rows[i] = row
            if row.aggregable:
                shared.append(counted(row.condition, f"c{i}"))
                plan.shared_scan.append((i, f"c{i}"))
            else:
                plan.own_count[i] = len(plan.measurements) + 1
                plan.measurements.append(count_where(row))
        elif isinstance(check, FreshnessCheck):
            column = exp.Column(this=ident(check.column), table=exp.to_identifier("s"))
            shared.append(exp.alias_(exp.Max(this=column), f"c{i}"))
    plan.measurements.insert(0, exp.select(*shared).from_(src))
    if any(isinstance(c, SchemaCheck) for c in step.checks) and step.table is not None:
        plan.schema_query = len(plan.measurements)
        plan.measurements.append(_columns_query(step.table, binder))
    return plan


def _columns_query(table: str, binder: Binder) -> exp.Expr:
    ref = table_ref(table)
    where: exp.Expr = exp.EQ(this=exp.column("table_name"), expression=binder.value(ref.name))
    if ref.db:
        where = exp.and_(
            where, exp.EQ(this=exp.column("table_schema"), expression=binder.value(ref.db))
        )
    catalog_table = exp.Table(
        this=exp.to_identifier("columns"),
        db=exp.to_identifier("information_schema"),
        catalog=exp.to_identifier(ref.catalog) if ref.catalog else None,
    )
    return (
        exp.select("column_name", "data_type")
        .from_(catalog_table)
        .where(where)
        .order_by("ordinal_position")
    )


def _judge(
    step: QualityStep, ctx: StepContext, plan: _Plan, measured: list[StatementResult]
) -> list[dict[str, Any]]:
    shared = dict(zip(measured[0].columns, measured[0].rows[0], strict=True))
    outcomes = []
    for i, check in enumerate(step.checks):
        outcome: dict[str, Any] = {
            "check": check.check_name,
            "type": check.type,
            "severity": check.severity,
        }
        if i in plan.rows:
            failing = (
                shared[f"c{i}"] if i not in plan.own_count else _scalar(measured[plan.own_count[i]])
            )
            ok = int(failing or 0) == 0
            outcome |= {
                "failing_rows": int(failing or 0),
                "observed": int(failing or 0),
                "threshold": _threshold(check),
                "reason": plan.rows[i].reason,
            }
        elif isinstance(check, RowCountCheck):
            n = int(shared["n"])
            ok = (check.min is None or n >= check.min) and (check.max is None or n <= check.max)
            outcome |= {"observed": n, "threshold": {"min": check.min, "max": check.max}}
        elif isinstance(check, FreshnessCheck):
            newest = shared[f"c{i}"]
            age = _age(newest, ctx.run.logical_date)
            ok = age is not None and age <= check.max_age.total_seconds()
            outcome |= {
                "observed": {"newest": jsonable(newest), "age_seconds": age},
                "threshold": {"max_age_seconds": check.max_age.total_seconds()},
            }
        elif isinstance(check, SchemaCheck):
            assert plan.schema_query is not None
            actual = {str(r[0]).lower(): str(r[1]) for r in measured[plan.schema_query].rows}
            problems = _schema_problems(check, actual, step.source_dialect)
            ok = not problems
            outcome |= {"observed": actual, "threshold": check.columns, "problems": problems}
        else:  # pragma: no cover - every check type is handled above
            raise StepError(f"unhandled check type {check.type}", retryable=False)
        outcome["status"] = (
            "passed" if ok else ("failed" if check.severity == "error" else "warned")
        )
        outcomes.append(outcome)
    return outcomes


async def _write(
    step: QualityStep,
    ctx: StepContext,
    engine: QueryEngine,
    binder: Binder,
    plan: _Plan,
    outcomes: list[dict[str, Any]],
) -> None:
    schema = exp.Create(
        this=exp.Table(this=ident(step.quarantine_schema)), kind="SCHEMA", exists=True
    )
    statements: list[exp.Expr] = [schema]
    samples: dict[int, int] = {}
    now = datetime.now(UTC).isoformat()
    for i, outcome in enumerate(outcomes):
        if i not in plan.rows or outcome["status"] == "passed":
            continue
        name = f"{step.id}__{outcome['check']}"
        table = exp.Table(this=ident(name), db=ident(step.quarantine_schema))
        audit = (ctx.run.run_id, outcome["check"], plan.rows[i].reason, now)
        statements += quarantine_statements(plan.rows[i], table, binder, audit)
        outcome["quarantine"] = f"{step.quarantine_schema}.{name}"
        if step.sample_rows:
            samples[i] = len(statements)
            statements.append(sample_where(plan.rows[i], step.sample_rows))
    results = exp.Table(this=ident(RESULTS_TABLE), db=ident(step.quarantine_schema))
    ddl = sqlglot.parse_one(_RESULTS_DDL)
    ddl.this.set("this", results.copy())
    statements.append(ddl)
    statements.append(
        exp.delete(
            results.copy(),
            where=exp.and_(
                exp.EQ(this=exp.column("run_id"), expression=binder.value(ctx.run.run_id)),
                exp.EQ(this=exp.column("step_id"), expression=binder.value(step.id)),
            ),
        )
    )
    rows = [
        exp.Tuple(
            expressions=[
                binder.value(v)
                for v in (
                    ctx.run.run_id,
                    ctx.run.pipeline,
                    step.id,
                    o["check"],
                    o["type"],
                    o["severity"],
                    o["status"],
                    o.get("failing_rows"),
                    _json_text(o.get("observed")),
                    _json_text(o.get("threshold")),
                    ctx.run.logical_date.isoformat(),
                    now,
                )
            ]
        )
        for o in outcomes
    ]
    statements.append(exp.insert(exp.Values(expressions=rows), results.copy()))
    written = await engine.run_statements(
        [binder.bound(s) for s in statements], fetch_rows=step.sample_rows, atomic=True
    )
    for i, index in samples.items():
        outcomes[i]["sample"] = written[index].preview(SAMPLE_MAX_BYTES)


def _scalar(result: StatementResult) -> Any:
    return result.rows[0][0] if result.rows else None


def _threshold(check: Any) -> Any:
    if check.type == "range":
        return {"min": jsonable(check.min), "max": jsonable(check.max)}
    if check.type == "accepted_values":
        return {"values": [jsonable(v) for v in check.values[:50]]}
    return {"failing_rows": 0}


def _age(newest: Any, logical_date: datetime) -> float | None:
    if newest is None:
        return None
    if isinstance(newest, str):
        newest = datetime.fromisoformat(newest)
    if isinstance(newest, date) and not isinstance(newest, datetime):
        newest = datetime(newest.year, newest.month, newest.day, tzinfo=UTC)
    if not isinstance(newest, datetime):
        return None
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)  # naive timestamps are read as UTC
    age: float = (logical_date - newest).total_seconds()
    return age


def _normal_type(text: str, dialect: str) -> str:
    try:
        return exp.DataType.build(text, dialect=dialect).sql(dialect=dialect).upper()
    except (sqlglot.errors.SqlglotError, ValueError):
        return text.strip().upper()


def _schema_problems(check: SchemaCheck, actual: dict[str, str], dialect: str) -> list[str]:
    if not actual:
        return ["table not found"]
    problems = []
    for name, expected in check.columns.items():
        got = actual.get(name.lower())
        if got is None:
            problems.append(f"missing column {name}")
        elif _normal_type(got, dialect) != _normal_type(expected, dialect):
            problems.append(f"{name}: expected {expected}, found {got}")
    if not check.allow_extra:
        expected_names = {n.lower() for n in check.columns}
        problems += [f"unexpected column {n}" for n in actual if n not in expected_names]
    return problems


def _json_text(value: Any) -> str:
    import json

    return json.dumps(jsonable(value), sort_keys=True)


def _describe(outcome: dict[str, Any]) -> str:
    if "failing_rows" in outcome:
        where = f" (quarantined in {outcome['quarantine']})" if outcome.get("quarantine") else ""
        return f"{outcome['check']}: {outcome['failing_rows']} row(s) {outcome['reason']}{where}"
    if outcome.get("problems"):
        return f"{outcome['check']}: {', '.join(outcome['problems'])}"
    return f"{outcome['check']}: observed {outcome['observed']}, expected {outcome['threshold']}"
