"""`laminar db check [--wait N]`: what the server's init container runs before it starts."""

from __future__ import annotations

import time
from pathlib import Path

from typer.testing import CliRunner

from pipeline_service.commands import app


def test_db_check_fails_until_the_database_is_migrated(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"LAMINAR_DATABASE_URL": f"sqlite:///{tmp_path / 'laminar.db'}"}
    started = time.monotonic()
    empty = runner.invoke(app, ["db", "check", "--wait", "1"], env=env)
    assert empty.exit_code == 2, empty.output
    assert "laminar db upgrade" in empty.output
    assert time.monotonic() - started >= 1  # it kept checking for --wait seconds
    upgraded = runner.invoke(app, ["db", "upgrade", "--no-search-attributes"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    ready = runner.invoke(app, ["db", "check"], env=env)
    assert ready.exit_code == 0 and "at schema" in ready.output, ready.output
