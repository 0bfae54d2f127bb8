"""Pure helpers of the service: YAML positions of definition paths, workflow ids."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pipeline_service.api.positions import locate
from pipeline_service.db.runs import new_public_id
from pipeline_service.launcher import workflow_id_for

TEXT = """\
name: p
steps:
  - id: a
    type: noop
  - id: "b c"
    env: {"weird key": 1}
"""


def test_locate_finds_the_deepest_node_on_a_path() -> None:
    assert locate(TEXT, "name") == (1, 7)
    assert locate(TEXT, "steps[0].type") == (4, 11)
    assert locate(TEXT, "steps[1]") == (5, 5)
    assert locate(TEXT, 'steps[1].env["weird key"]') == (6, 24)  # the value
    assert locate(TEXT, "steps[1].missing") == (5, 5)  # the nearest existing node
    assert locate(TEXT, "steps[9]") == (3, 3)
    assert locate(TEXT, "nothing") is None
    assert locate(TEXT, "<document>") is None
    assert locate(": not yaml [", "name") is None


def test_workflow_ids_are_one_per_date_or_key() -> None:
    date = datetime(2026, 1, 31, 2, tzinfo=timezone(timedelta(hours=2)))
    assert workflow_id_for("t", "p", date, None) == "t/p/2026-01-31T00:00:00+00:00"
    assert workflow_id_for("t", "p", date, "k") == "t/p/2026-01-31T00:00:00+00:00"
    assert workflow_id_for("t", "p", None, "deploy-1") == "t/p/key:deploy-1"
    a, b = workflow_id_for("t", "p", None, None), workflow_id_for("t", "p", None, None)
    assert a != b and a.startswith("t/p/manual__")


def test_run_ids_never_look_like_a_command_line_option() -> None:
    ids = [new_public_id() for _ in range(2000)]  # 1 in 64 would start with "-"
    assert not [i for i in ids if i.startswith("-")] and len(set(ids)) == len(ids)
    assert all(len(i) == 16 for i in ids)
