"""`laminar secrets` and `laminar quota` against a real `laminar server` (SQLite): the value
goes in through stdin and never comes out."""

from __future__ import annotations

import signal
from pathlib import Path

from pipeline_service.temporal.dev_server import free_port
from tests.e2e.conftest import E2E_ADMIN_KEY, Cli, sqlite_server_with_tenant


def test_secrets_and_quota_commands(cli: Cli, tmp_path: Path) -> None:
    server, tenant = sqlite_server_with_tenant(cli, tmp_path, "admin", free_port())
    admin = {"LAMINAR_URL": tenant["LAMINAR_URL"], "LAMINAR_API_KEY": E2E_ADMIN_KEY}

    value = "s3cr3t-value-planted"
    stored = cli.run("secrets", "set", "warehouse_token", input=value + "\n", env=tenant)
    assert stored.code == 0 and "created" in stored.stdout, stored.details
    again = cli.run("secrets", "set", "warehouse_token", input=value, env=tenant)
    assert again.code == 0 and "replaced" in again.stdout, again.details
    listed = cli.run("secrets", "list", env=tenant)
    assert listed.code == 0 and "warehouse_token" in listed.stdout, listed.details
    empty = cli.run("secrets", "set", "other", input="", env=tenant)
    assert empty.code == 2 and "no value" in empty.stderr, empty.details
    missing = cli.run("secrets", "delete", "nope", env=tenant)
    assert missing.code == 2 and "404" in missing.stderr, missing.details
    deleted = cli.run("secrets", "delete", "warehouse_token", env=tenant)
    assert deleted.code == 0, deleted.details
    for result in (stored, again, listed, empty, missing, deleted):
        assert value not in result.output and "Traceback" not in result.output

    quota = cli.run(
        "quota", "set", "acme", "--max-concurrent-runs", "3", "--overflow-policy", "reject",
        "--allowed-step-type", "sql", "--allowed-step-type", "noop", env=admin,
    )  # fmt: skip
    assert quota.code == 0 and "max_concurrent_runs: 3" in quota.stdout, quota.details
    shown = cli.run("quota", "show", env=tenant)
    assert shown.code == 0, shown.details
    assert "overflow_policy: reject" in shown.stdout and "['sql', 'noop']" in shown.stdout
    refused = cli.run("quota", "set", "acme", "--max-concurrent-runs", "9", env=tenant)
    assert refused.code == 2 and "403" in refused.stderr, refused.details
    bad = cli.run("quota", "set", "acme", "--overflow-policy", "sometimes", env=admin)
    assert bad.code == 2 and "overflow_policy" in bad.stderr, bad.details
    server.proc.send_signal(signal.SIGTERM)
    result = server.wait(20)
    assert "Traceback" not in result.output and value not in result.output, result.output
