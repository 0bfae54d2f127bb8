"""`laminar run` with pipeline-level notifications: with the run recorded (`--http-port`), the
cluster's notifier sends one signed webhook for the failure (from the recorded events, to a real
local receiver); without recording it says the rules are not sent, and sends nothing."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_service.temporal.dev_server import free_port
from tests.e2e.conftest import Cli
from tests.receivers import EXAMPLE_SECRET, Receiver, example_channels, verify

PIPELINE = """\
name: alerting
steps:
  - {id: load, type: sql, sql: "SELECT * FROM no_such_table"}
notifications:
  - {on: [failure], channel: orders_alerts}
  - {on: [success], channel: orders_alerts}
"""


def test_a_failed_run_notifies_once_through_the_recorded_events(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "alerting.yaml"
    path.write_text(PIPELINE)
    receiver = Receiver()
    try:
        result = cli.run(
            "run", "--once", path, "--no-ui", "--state-dir", tmp_path / "state",
            "--http-port", str(free_port()), env=cli.env(example_channels(receiver.url)),
        )  # fmt: skip
        assert result.code == 1, result.details
        assert "notify      2 rule(s)" in result.stdout, result.details
        assert len(receiver.requests) == 1, result.details
        headers, body = receiver.requests[0]
        assert verify(headers, body, EXAMPLE_SECRET)
        sent = json.loads(body)
        assert (sent["on"], sent["event"]["type"]) == ("failure", "PIPELINE_FAILED")
        assert sent["title"] == "[default] alerting: run failed"
        assert "no_such_table" in sent["message"]

        unrecorded = cli.run(
            "run", "--once", path, "--no-ui", "--state-dir", tmp_path / "other",
            env=cli.env(example_channels(receiver.url)),
        )  # fmt: skip
        assert unrecorded.code == 1, unrecorded.details
        assert "run with --http-port or --kafka to send them" in unrecorded.stdout
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
