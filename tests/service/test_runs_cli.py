"""`laminar runs trigger --wait` against the real API (served by uvicorn on a free port in this
test's event loop) and a real worker: off a terminal, one line per step change, then the final
step table; the exit status is the run's."""

from __future__ import annotations

from tests.service.conftest import Service
from tests.service.test_scheduling_cli import api_url, laminar

__all__ = ["api_url"]  # the fixture, shared with the scheduling commands' tests


async def test_trigger_wait_follows_the_run_and_exits_with_its_status(
    service: Service, api_url: str
) -> None:
    tenant = await service.tenant()
    steps = [
        {"id": "first", "type": "noop"},
        {"id": "count", "type": "sql", "sql": "SELECT 42 AS n", "depends_on": ["first"]},
    ]
    await tenant.apply({"name": "fine", "steps": steps})
    waited = await laminar(api_url, tenant.key, "runs", "trigger", "fine", "--wait")
    assert waited.exit_code == 0, waited.output
    lines = waited.output.splitlines()
    assert lines[0].startswith("run ") and lines[0].endswith(("(QUEUED)", "(RUNNING)")), lines
    # Off a terminal: one line per change of a step, in order, no live-table redraws.
    assert "first: SUCCEEDED" in lines and "count: SUCCEEDED" in lines, waited.output
    assert lines.index("first: SUCCEEDED") < lines.index("count: SUCCEEDED")
    assert waited.output.count("count: SUCCEEDED") == 1, waited.output
    # Then the final table (the same one `laminar run` prints) and the run's status.
    assert "fine  [SUCCEEDED]" in waited.output, waited.output
    assert any(line.startswith("run SUCCEEDED in ") for line in lines), waited.output

    broken = [{"id": "bad", "type": "sql", "sql": "SELECT * FROM no_such_table",
               "retry": {"max_attempts": 1}}]  # fmt: skip
    await tenant.apply({"name": "broken", "steps": broken})
    failed = await laminar(api_url, tenant.key, "runs", "trigger", "broken", "--wait")
    assert failed.exit_code == 1, failed.output
    assert any(line.startswith("bad: FAILED  ") for line in failed.output.splitlines())
    assert "no_such_table" in failed.output and "run FAILED" in failed.output, failed.output
    assert "Traceback" not in failed.output
