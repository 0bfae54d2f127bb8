"""Step executors run directly (no Temporal): SQL on DuckDB, Python subprocesses, no-ops."""

from __future__ import annotations

import asyncio
import graphlib
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest
import yaml

from schemas.pipeline import STEP_TYPES, NoopStep, PipelineDefinition, PythonStep, SqlStep
from schemas.run import RunContext
from steps.base import StepContext, StepError
from steps.engines.duckdb import DuckDBEngine, quote_identifier
from steps.noop import NoopExecutor
from steps.python_script import PythonScriptExecutor
from steps.registry import build_executors, execute_step
from steps.sql import SqlExecutor

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline"
    path.mkdir()
    return path


class Heartbeats:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *details: Any) -> None:
        self.count += 1


def make_ctx(
    tmp_path: Path,
    source_dir: Path,
    step_id: str = "step",
    *,
    params: dict[str, Any] | None = None,
    attempt: int = 1,
    heartbeat: Heartbeats | None = None,
    pipeline: str = "test",
) -> StepContext:
    logical = datetime(2026, 1, 31, tzinfo=UTC)
    run = RunContext(
        pipeline=pipeline,
        run_id=f"default/{pipeline}/2026-01-31",
        logical_date=logical,
        data_interval_start=logical - timedelta(days=1),
        data_interval_end=logical,
        params=params or {},
    )
    return StepContext(
        run=run,
        step_id=step_id,
        attempt=attempt,
        idempotency_key=f"{run.run_id}/{step_id}",
        source_dir=source_dir,
        work_dir=tmp_path / "work" / step_id,
        heartbeat=heartbeat or Heartbeats(),
    )


def sql_step(sql: str, step_id: str = "step") -> SqlStep:
    return SqlStep(id=step_id, type="sql", sql=sql)


def python_step(script: str, **fields: Any) -> PythonStep:
    return PythonStep(id=fields.pop("id", "step"), type="python", script=script, **fields)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


# -- SQL ---------------------------------------------------------------------------------


async def test_sql_reports_rows_affected_and_statement_count(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = sql_step(
        """
        CREATE TABLE t AS SELECT range AS i FROM range(5);  -- 5
        INSERT INTO t VALUES (10);                          -- 1
        UPDATE t SET i = i + 100 WHERE i < 2;               -- 2
        DELETE FROM t WHERE i = 10;                         -- 1
        SELECT * FROM t;                                    -- not a write
        """
    )
    result = await SqlExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert result.rows_affected == 9
    assert result.outputs == {"statements": 5, "engine": "duckdb", "output_table": "t"}
    assert engine.cursor().execute("SELECT count(*) FROM t").fetchone() == (5,)


async def test_sql_without_writes_reports_no_row_count(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = sql_step("CREATE TABLE empty_t (a INTEGER); SELECT 42")
    result = await SqlExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert result.rows_affected is None
    assert result.outputs == {"statements": 2, "engine": "duckdb", "output_table": "empty_t"}


async def test_sql_template_values_are_bound_not_spliced(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    evil = "x'); DROP TABLE victims; --"
    engine.cursor().execute("CREATE TABLE victims (name VARCHAR, ds DATE)")
    step = sql_step(
        "INSERT INTO victims VALUES ({{ params.name }}, {{ ds }}::DATE);"
        "INSERT INTO victims SELECT name || '!', ds FROM victims WHERE name = {{ params.name }};"
    )
    ctx = make_ctx(tmp_path, source_dir, params={"name": evil})
    result = await SqlExecutor(engine).execute(step, ctx)
    assert result.rows_affected == 2
    rows = engine.cursor().execute("SELECT name, ds::VARCHAR FROM victims ORDER BY name").fetchall()
    assert rows == [(evil, "2026-01-31"), (evil + "!", "2026-01-31")]


async def test_bad_sql_is_not_retryable_and_script_is_atomic(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    executor = SqlExecutor(engine)
    ctx = make_ctx(tmp_path, source_dir)
    for sql in ("SELEC 1", "SELECT * FROM no_such_table", "SELECT no_such_column FROM range(1)"):
        with pytest.raises(StepError) as info:
            await executor.execute(sql_step(sql), ctx)
        assert info.value.retryable is False
        assert info.value.error_type == "SqlError"
        assert isinstance(info.value.__cause__, duckdb.Error)

    with pytest.raises(StepError):
        await executor.execute(
            sql_step("CREATE TABLE half_done AS SELECT 1 AS a; SELECT * FROM missing"), ctx
        )
    tables = engine.cursor().execute("SELECT table_name FROM duckdb_tables()").fetchall()
    assert ("half_done",) not in tables


async def test_sql_relative_paths_resolve_in_source_dir(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (source_dir / "data").mkdir()
    (source_dir / "data" / "x.csv").write_text("a,b\n1,2\n3,4\n")
    monkeypatch.chdir(tmp_path)  # anywhere but the source dir
    step = sql_step("CREATE TABLE x AS SELECT * FROM read_csv_auto('data/x.csv')")
    result = await SqlExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert result.rows_affected == 2


async def test_cancel_interrupts_long_query(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, slow_query: str
) -> None:
    executor = SqlExecutor(engine)
    ctx = make_ctx(tmp_path, source_dir)
    task = asyncio.create_task(executor.execute(sql_step(slow_query), ctx))
    await asyncio.sleep(0.6)
    assert not task.done()
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0
    # (heartbeats while it runs come from the run_step activity: test_run_step_activity.py)
    # The worker thread let go: the database answers at once.
    result = await executor.execute(sql_step("CREATE TABLE after AS SELECT 1 AS a"), ctx)
    assert result.rows_affected == 1


async def test_timeout_interrupts_long_query(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, slow_query: str
) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            SqlExecutor(engine).execute(sql_step(slow_query), make_ctx(tmp_path, source_dir)),
            timeout=0.5,
        )
    assert time.monotonic() - started < 2.5


async def test_cancel_between_statements_stops_the_script(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    # Many short statements: an interrupt that lands between two must still stop the script.
    sql = (
        "CREATE TABLE many (i INTEGER);"
        + "INSERT INTO many SELECT count(*) FROM range(20000);" * 20000
    )
    task = asyncio.create_task(
        SqlExecutor(engine).execute(sql_step(sql), make_ctx(tmp_path, source_dir))
    )
    await asyncio.sleep(0.5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0
    tables = engine.cursor().execute("SELECT table_name FROM duckdb_tables()").fetchall()
    assert ("many",) not in tables  # rolled back as a whole


def test_quote_identifier() -> None:
    assert quote_identifier("t") == '"t"'
    assert quote_identifier("main.t") == '"main"."t"'
    assert quote_identifier('we"ird') == '"we""ird"'
    with pytest.raises(StepError):
        quote_identifier("a..b")


# -- Python ------------------------------------------------------------------------------


def write_script(source_dir: Path, name: str, body: str) -> str:
    path = source_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return name


async def test_python_environment_is_confined(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t")
    monkeypatch.setenv("LANG", "C.UTF-8")
    script = write_script(
        source_dir,
        "env.py",
        "import json, os\njson.dump(dict(os.environ), open(os.environ['LAMINAR_RESULT'], 'w'))\n",
    )
    step = python_step(script, env={"DAY": "{{ ds }}", "REGION": "{{ params.region }}"})
    ctx = make_ctx(tmp_path, source_dir, params={"region": "EU"})
    result = await PythonScriptExecutor(engine).execute(step, ctx)
    env = result.outputs
    assert "SECRET_TOKEN" not in env
    work_dir = str(ctx.work_dir.resolve())
    assert env["HOME"] == work_dir
    assert env["LAMINAR_OUTPUT_DIR"] == work_dir
    assert env["DAY"] == "2026-01-31"
    assert env["REGION"] == "EU"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["LANG"] == "C.UTF-8"
    allowed = {"PATH", "LANG", "LC_ALL", "HOME", "PYTHONUNBUFFERED", "DAY", "REGION"}
    allowed |= {"LAMINAR_CONTEXT", "LAMINAR_RESULT", "LAMINAR_OUTPUT_DIR"}
    # The interpreter may add a few of its own (e.g. LC_CTYPE coercion); nothing else leaks.
    assert set(env) - allowed <= {"LC_CTYPE"}


async def test_python_context_result_args_and_log(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    script = write_script(
        source_dir,
        "scripts/hello.py",
        "import json, os, sys\n"
        "ctx = json.load(open(os.environ['LAMINAR_CONTEXT']))\n"
        "print('to stdout', sys.argv[1:])\n"
        "print('to stderr', file=sys.stderr)\n"
        "json.dump({'ctx': ctx, 'cwd': os.getcwd()}, open(os.environ['LAMINAR_RESULT'], 'w'))\n",
    )
    step = python_step(script, args=["--day", "{{ ds }}", "{{ params.n }}"])
    ctx = make_ctx(tmp_path, source_dir, params={"n": 3}, attempt=2)
    executor = PythonScriptExecutor(engine)
    result = await executor.execute(step, ctx)

    seen = result.outputs["ctx"]
    assert seen["run_id"] == "default/test/2026-01-31"
    assert seen["pipeline"] == "test"
    assert seen["step_id"] == "step"
    assert seen["attempt"] == 2
    assert seen["idempotency_key"] == "default/test/2026-01-31/step"
    assert seen["logical_date"].startswith("2026-01-31T00:00:00")
    assert seen["data_interval_start"].startswith("2026-01-30")
    assert seen["params"] == {"n": 3}
    assert seen["inputs"] == {}
    assert result.outputs["cwd"] == str(ctx.work_dir.resolve())

    assert result.log_path == str(ctx.work_dir.resolve() / "step.log")
    log = Path(result.log_path).read_text()
    assert "--- attempt 2 ---" in log
    assert "to stdout ['--day', '2026-01-31', '3']" in log
    assert "to stderr" in log

    # A second attempt appends to the same log under its own header.
    await executor.execute(step, make_ctx(tmp_path, source_dir, params={"n": 3}, attempt=3))
    log = Path(result.log_path).read_text()
    assert log.index("--- attempt 2 ---") < log.index("--- attempt 3 ---")


async def test_python_nonzero_exit_raises_with_log_tail(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    script = write_script(
        source_dir,
        "fail.py",
        "for i in range(40):\n    print(f'line {i}')\nraise SystemExit(3)\n",
    )
    with pytest.raises(StepError) as info:
        await PythonScriptExecutor(engine).execute(
            python_step(script), make_ctx(tmp_path, source_dir)
        )
    error = info.value
    assert error.error_type == "ScriptFailed"
    assert error.retryable is True
    assert "exited with code 3" in error.message
    assert "line 39" in error.message
    assert "line 10\n" not in error.message  # only the tail


async def test_python_invalid_result_is_not_retryable(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    executor = PythonScriptExecutor(engine)
    ctx = make_ctx(tmp_path, source_dir)
    bad = write_script(
        source_dir, "bad.py", "import os\nopen(os.environ['LAMINAR_RESULT'], 'w').write('{no')\n"
    )
    with pytest.raises(StepError) as info:
        await executor.execute(python_step(bad), ctx)
    assert (info.value.error_type, info.value.retryable) == ("InvalidResult", False)

    listing = write_script(
        source_dir, "list.py", "import os\nopen(os.environ['LAMINAR_RESULT'], 'w').write('[1]')\n"
    )
    with pytest.raises(StepError) as info:
        await executor.execute(python_step(listing), ctx)
    assert (info.value.error_type, info.value.retryable) == ("InvalidResult", False)

    # No result file: empty outputs, and a stale one from an earlier attempt is not reused.
    quiet = write_script(source_dir, "quiet.py", "pass\n")
    result = await executor.execute(python_step(quiet), ctx)
    assert result.outputs == {}


SPAWNER = """\
import os, signal, subprocess, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, sys, time\\n"
     "if sys.argv[1] == 'ignore-term': signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
     "time.sleep(120)", sys.argv[1]]
)
with open("pids.txt", "w") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(120)
"""


@pytest.mark.parametrize("mode", ["normal", "ignore-term"])
async def test_python_cancel_kills_the_process_tree(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, mode: str
) -> None:
    script = write_script(source_dir, "spawner.py", SPAWNER)
    ctx = make_ctx(tmp_path, source_dir)
    executor = PythonScriptExecutor(engine, terminate_grace=0.5)
    task = asyncio.create_task(executor.execute(python_step(script, args=[mode]), ctx))
    pids = [int(p) for p in (await wait_for_file(ctx.work_dir / "pids.txt")).split()]
    assert not any(gone(pid) for pid in pids)

    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 3.0
    deadline = time.monotonic() + 2.0
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert all(gone(pid) for pid in pids), pids


async def test_python_timeout_kills_the_process_tree(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    script = write_script(source_dir, "spawner.py", SPAWNER)
    ctx = make_ctx(tmp_path, source_dir)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            PythonScriptExecutor(engine).execute(python_step(script, args=["normal"]), ctx),
            timeout=1.5,
        )
    pids = [int(p) for p in (ctx.work_dir / "pids.txt").read_text().split()]
    await asyncio.sleep(0.2)
    assert all(gone(pid) for pid in pids), pids


async def test_python_background_children_do_not_outlive_the_step(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    script = write_script(
        source_dir,
        "leaver.py",
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "open('child.txt', 'w').write(f'{child.pid}\\n')\n",
    )
    ctx = make_ctx(tmp_path, source_dir)
    await PythonScriptExecutor(engine).execute(python_step(script), ctx)
    pid = int((ctx.work_dir / "child.txt").read_text())
    deadline = time.monotonic() + 2.0
    while not gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert gone(pid)


async def test_python_script_path_escape_is_refused_at_run_time(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("print('escaped')\n")
    (source_dir / "scripts").mkdir()
    (source_dir / "scripts" / "innocent.py").symlink_to(outside)
    executor = PythonScriptExecutor(engine)
    ctx = make_ctx(tmp_path, source_dir)
    for script in ("scripts/innocent.py", "../outside.py", str(outside), "missing.py", "scripts"):
        with pytest.raises(StepError) as info:
            await executor.execute(python_step(script), ctx)
        assert (info.value.error_type, info.value.retryable) == ("ScriptPathError", False)
    assert not (ctx.work_dir / "step.log").exists()  # refused before anything ran

    # A symlink that stays inside the directory is fine.
    (source_dir / "real.py").write_text("pass\n")
    (source_dir / "scripts" / "alias.py").symlink_to(source_dir / "real.py")
    await executor.execute(python_step("scripts/alias.py"), ctx)


@pytest.mark.parametrize("input_format", ["csv", "parquet"])
async def test_python_inputs_are_exported(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, input_format: str
) -> None:
    cursor = engine.cursor()
    cursor.execute("CREATE TABLE orders AS SELECT range AS id, 'o' || range AS name FROM range(3)")
    cursor.execute("CREATE SCHEMA mart")
    cursor.execute('CREATE TABLE mart."Odd Name" AS SELECT 1 AS x')
    script = write_script(
        source_dir,
        "inputs.py",
        "import json, os\n"
        "ctx = json.load(open(os.environ['LAMINAR_CONTEXT']))\n"
        "sizes = {t: os.path.getsize(p) for t, p in ctx['inputs'].items()}\n"
        "result = {'inputs': ctx['inputs'], 'sizes': sizes}\n"
        "json.dump(result, open(os.environ['LAMINAR_RESULT'], 'w'))\n",
    )
    step = python_step(script, inputs=["orders", "mart.Odd Name"], input_format=input_format)
    ctx = make_ctx(tmp_path, source_dir)
    result = await PythonScriptExecutor(engine).execute(step, ctx)

    inputs = result.outputs["inputs"]
    inputs_dir = ctx.work_dir.resolve() / "inputs"
    assert inputs["orders"] == str(inputs_dir / f"orders.{input_format}")
    assert Path(inputs["mart.Odd Name"]).parent == inputs_dir
    assert all(size > 0 for size in result.outputs["sizes"].values())
    if input_format == "csv":
        assert Path(inputs["orders"]).read_text().splitlines() == [
            "id,name",
            "0,o0",
            "1,o1",
            "2,o2",
        ]
    else:
        rows = cursor.execute("SELECT * FROM read_parquet(?)", [inputs["orders"]]).fetchall()
        assert rows == [(0, "o0"), (1, "o1"), (2, "o2")]

    with pytest.raises(StepError) as info:
        await PythonScriptExecutor(engine).execute(python_step(script, inputs=["nope"]), ctx)
    assert (info.value.error_type, info.value.retryable) == ("SqlError", False)


# -- registry ----------------------------------------------------------------------------


async def test_registry_dispatches_and_stamps_results(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    executors = build_executors(engine)
    assert set(executors) == set(STEP_TYPES)
    ctx = make_ctx(tmp_path, source_dir, attempt=4)
    result = await execute_step(executors, NoopStep(id="n", type="noop"), ctx)
    assert result.attempt == 4
    assert result.started_at is not None and result.finished_at is not None
    assert result.started_at <= result.finished_at


async def test_registry_wraps_unexpected_errors_once(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    class Exploding(NoopExecutor):
        async def execute(self, step: Any, ctx: StepContext) -> Any:
            raise KeyError("boom")

    ctx = make_ctx(tmp_path, source_dir)
    executors = {**build_executors(engine), "noop": Exploding()}
    with pytest.raises(StepError) as info:
        await execute_step(executors, NoopStep(id="n", type="noop"), ctx)
    assert info.value.error_type == "KeyError"
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, KeyError)

    # StepErrors pass through untouched; template problems cannot be fixed by retrying.
    with pytest.raises(StepError) as info:
        await execute_step(executors, sql_step("SELECT {{ params.missing }}"), ctx)
    assert (info.value.error_type, info.value.retryable) == ("TemplateError", False)
    with pytest.raises(StepError) as info:
        await execute_step(executors, sql_step("SELEC"), ctx)
    assert (info.value.error_type, info.value.__cause__.__class__) == (
        "SqlError",
        duckdb.ParserException,
    )


# -- examples ----------------------------------------------------------------------------


def load_example(name: str) -> PipelineDefinition:
    return PipelineDefinition.model_validate(yaml.safe_load((EXAMPLES / name).read_text()))


async def run_pipeline(
    pipeline: PipelineDefinition, engine: DuckDBEngine, tmp_path: Path
) -> dict[str, Any]:
    """Levels of the DAG in order, each level's steps concurrently (as the workflow would)."""
    executors = build_executors(engine)
    params = {name: spec.default for name, spec in pipeline.params.items()}
    sorter = graphlib.TopologicalSorter({s.id: set(s.depends_on) for s in pipeline.steps})
    sorter.prepare()
    results: dict[str, Any] = {}
    while sorter.is_active():
        ready = sorter.get_ready()
        done = await asyncio.gather(
            *(
                execute_step(
                    executors,
                    pipeline.step(step_id),
                    make_ctx(tmp_path, EXAMPLES, step_id, params=params, pipeline=pipeline.name),
                )
                for step_id in ready
            )
        )
        for step_id, result in zip(ready, done, strict=True):
            results[step_id] = result
            sorter.done(step_id)
    return results


async def test_sales_report_example_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline = load_example("sales_report.yaml")
    database = tmp_path / "state" / "laminar.duckdb"
    engine = DuckDBEngine(database)
    try:
        results = await run_pipeline(pipeline, engine, tmp_path)
    finally:
        engine.close()

    assert results["load_sales"].rows_affected == 30
    assert results["by_region"].rows_affected == 4
    report = results["report"]
    assert report.outputs["regions"] == 4
    report_path = Path(report.outputs["report"])
    assert report_path == tmp_path.resolve() / "work" / "report" / "report.md"
    text = report_path.read_text()
    assert text.startswith("# Sales report for 2026-01-31")
    assert "## By region" in text and "## By product" in text
    assert "at least 2 units" in text

    with duckdb.connect(str(database), read_only=True) as con:
        tables = {
            row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        assert {"sales", "sales_by_region", "sales_by_product", "sales_summary"} <= tables
        min_quantity = con.execute("SELECT min(quantity) FROM sales").fetchone()
        assert min_quantity is not None and min_quantity[0] == 1  # the filter has work to do
        summary_regions = con.execute("SELECT count(*) FROM sales_summary").fetchone()
        assert summary_regions == (4,)
        product_units = con.execute("SELECT sum(units) FROM sales_by_product").fetchone()
        all_units = con.execute("SELECT sum(quantity) FROM sales").fetchone()
        assert product_units is not None and all_units is not None
        assert product_units[0] < all_units[0]


async def test_hello_example_runs(tmp_path: Path, engine: DuckDBEngine) -> None:
    results = await run_pipeline(load_example("hello.yaml"), engine, tmp_path)
    assert results["greet"].rows_affected == 1
    row = engine.cursor().execute("SELECT greeting, ds FROM greetings").fetchone()
    assert row == ("hello", "2026-01-31")


async def test_readme_lists_exactly_the_environment_of_python_steps(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    script = write_script(
        source_dir,
        "env.py",
        "import json, os\njson.dump(dict(os.environ), open(os.environ['LAMINAR_RESULT'], 'w'))\n",
    )
    result = await PythonScriptExecutor(engine).execute(
        python_step(script, env={"DECLARED": "x"}), make_ctx(tmp_path, source_dir)
    )
    given = set(result.outputs) - {"DECLARED", "LC_CTYPE"}  # LC_CTYPE: the interpreter's own
    readme = (EXAMPLES.parent / "README.md").read_text()
    # The section ends at the next heading (later sections have tables of their own).
    section = readme.split("<!-- python-step-env -->")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))
    assert documented == given
