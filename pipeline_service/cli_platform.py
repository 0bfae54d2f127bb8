"""`laminar secrets set|list|delete` and `laminar quota show|set`: the multi-tenant parts of
the CLI client (same `--url` / `--api-key` and exit codes as cli_client)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from pipeline_service.cli_client import DEFAULT_URL, Api, Key, Url, _fail, _problem, console

secrets_app = typer.Typer(
    help="A tenant's secrets (write-only: values are never shown).", no_args_is_help=True
)
quota_app = typer.Typer(help="A tenant's quota.", no_args_is_help=True)


@secrets_app.command("set")
def secrets_set(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Store a secret; its value is read from stdin (one trailing newline is dropped)."""
    if sys.stdin.isatty():
        console.print(f"value of secret {name} (then Enter, Ctrl-D):", highlight=False)
    value = sys.stdin.read()
    value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise _fail('no value on stdin: `printf %s "$TOKEN" | laminar secrets set NAME`')
    api = Api(url, api_key)
    response = api.request("PUT", f"/v1/secrets/{name}", json={"value": value})
    if response.status_code >= 400:
        raise _problem(response)
    verb = "created" if response.status_code == 201 else "replaced"
    console.print(f"secret [cyan]{name}[/] {verb}")


@secrets_app.command("list")
def secrets_list(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """The names of the tenant's secrets."""
    rows = Api(url, api_key).call("GET", "/v1/secrets")
    table = Table("name", "updated", "by")
    for row in rows:
        table.add_row(row["name"], row["updated_at"], row["updated_by"])
    console.print(table)


@secrets_app.command("delete")
def secrets_delete(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    Api(url, api_key).call("DELETE", f"/v1/secrets/{name}")
    console.print(f"secret [cyan]{name}[/] deleted")


def _show_quota(quota: dict[str, Any]) -> None:
    for field in (
        "tenant",
        "max_concurrent_runs",
        "overflow_policy",
        "max_queued_runs",
        "allowed_step_types",
        "max_steps_per_pipeline",
        "active_runs",
        "waiting_runs",
    ):
        value = quota.get(field)
        console.print(f"{field}: {'unlimited' if value is None else value}", highlight=False)


@quota_app.command("show")
def quota_show(
    tenant: Annotated[
        str | None, typer.Option(help="With the platform admin key: the tenant.")
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """The tenant's quota and its runs active and waiting now."""
    path = f"/v1/tenants/{tenant}/quota" if tenant else "/v1/quota"
    _show_quota(Api(url, api_key).call("GET", path))


@quota_app.command("set")
def quota_set(
    tenant: str,
    max_concurrent_runs: Annotated[int | None, typer.Option(min=1)] = None,
    overflow_policy: Annotated[str, typer.Option(help="queue, reject or drop_oldest")] = "queue",
    max_queued_runs: Annotated[int | None, typer.Option(min=1)] = None,
    allowed_step_type: Annotated[
        list[str] | None, typer.Option(help="Repeat for each allowed type; default: all.")
    ] = None,
    max_steps_per_pipeline: Annotated[int | None, typer.Option(min=1)] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Set a tenant's whole quota (platform admin key); limits not given are unlimited."""
    body = {
        "max_concurrent_runs": max_concurrent_runs,
        "overflow_policy": overflow_policy,
        "max_queued_runs": max_queued_runs,
        "allowed_step_types": allowed_step_type or None,
        "max_steps_per_pipeline": max_steps_per_pipeline,
    }
    _show_quota(Api(url, api_key).call("PUT", f"/v1/tenants/{tenant}/quota", json=body))


def register(app: typer.Typer) -> None:
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(quota_app, name="quota")
