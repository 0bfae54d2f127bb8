"""The CLI client over the REST API: `laminar pipelines ...`, `laminar runs ...`,
`laminar tenants create`, `laminar keys create`. `--url`/`--api-key` or LAMINAR_URL and
LAMINAR_API_KEY. Exit codes: 0 done, 1 a run that failed (--wait), 2 refused (the problems
are listed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import httpx

    from schemas.run import RunState

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

Url = Annotated[str, typer.Option("--url", envvar="LAMINAR_URL", help="The API's base URL.")]
Key = Annotated[
    str | None, typer.Option("--api-key", envvar="LAMINAR_API_KEY", help="API key (Bearer).")
]
DEFAULT_URL = "http://127.0.0.1:8092"
FINISHED = {"SUCCEEDED", "FAILED", "CANCELLED"}

pipelines_app = typer.Typer(help="Pipelines stored in the service.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs: trigger, watch, list, cancel, retry.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (platform admin key).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)


class Api:
    def __init__(self, url: str, key: str | None) -> None:
        import httpx  # not on every `laminar` start: only the client commands need it

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30)
        self.url = url

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _fail(f"cannot reach the Laminar API at {self.url}: {exc}") from None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _problem(response)
        return response.json() if response.content else None


def _fail(message: str, problems: list[str] | None = None) -> typer.Exit:
    errors.print(f"[bold red]{message}[/]", highlight=False, markup=True)
    for problem in problems or []:
        errors.print(f"  {problem}", highlight=False, markup=False)
    return typer.Exit(2)


def _problem(response: httpx.Response) -> typer.Exit:
    try:
        body = response.json()
    except ValueError:
        return _fail(f"HTTP {response.status_code}: {response.text[:500]}")
    problems = []
    for error in body.get("errors") or []:
        where = f" (line {error['line']}, column {error['column']})" if error.get("line") else ""
        problems.append(f"{error.get('path')}: {error.get('message')}{where}")
    detail = body.get("detail") if not problems else body.get("title")
    return _fail(f"{response.status_code} {detail}", problems)


DEFINITION_NAMES = ("pipeline.yaml", "pipeline.yml", "pipeline.json")
SKIPPED_PARTS = {"__pycache__", ".git", ".venv", "node_modules"}


def _definition_body(file: Path) -> dict[str, Any]:
    """A file: its definition. A directory: its definition (pipeline.yaml, or its one YAML
    file) and every other file under it as the version's code bundle."""
    if file.is_dir():
        return _bundle_body(file)
    if not file.is_file():
        raise _fail(f"no such file: {file}")
    text = file.read_text(encoding="utf-8")
    return {"source": text, "format": "json" if file.suffix.lower() == ".json" else "yaml"}


def _bundle_body(directory: Path) -> dict[str, Any]:
    import base64

    named = [directory / name for name in DEFINITION_NAMES if (directory / name).is_file()]
    yamls = sorted(p for p in directory.glob("*.y*ml") if p.is_file())
    found = named or (yamls if len(yamls) == 1 else [])
    if not found:
        raise _fail(
            f"{directory}: no pipeline.yaml (or single .yaml file) to apply"
            + (f"; found {', '.join(p.name for p in yamls)}" if yamls else "")
        )
    body = _definition_body(found[0])
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        hidden = any(part.startswith(".") or part in SKIPPED_PARTS for part in relative.parts)
        if hidden or not path.is_file() or path == found[0] or path.suffix == ".pyc":
            continue
        files[relative.as_posix()] = base64.b64encode(path.read_bytes()).decode()
    body["files"] = files
    return body


def _params(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise _fail("bad -p (expected key=value):", bad)
    return dict(pair.split("=", 1) for pair in pairs)


@pipelines_app.command("apply")
def pipelines_apply(file: Path, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Create the pipeline, or store a new version if it exists (unchanged: no new version).
    FILE may be a directory: its pipeline.yaml, with every other file in it uploaded as the
    version's code bundle (workers need not have them)."""
    api = Api(url, api_key)
    body = _definition_body(file)
    checked = api.call("POST", "/v1/pipelines/validate", json=body)
    name = checked["name"]
    exists = api.request("GET", f"/v1/pipelines/{name}").status_code == 200
    if exists:
        result = api.call("PUT", f"/v1/pipelines/{name}", json=body)
    else:
        result = api.call("POST", "/v1/pipelines", json=body)
    files = f", {len(body['files'])} files bundled" if body.get("files") else ""
    console.print(
        f"pipeline [cyan]{name}[/] version {result['current_version']} ({result['status']}){files}"
    )


@pipelines_app.command("validate")
def pipelines_validate(file: Path, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Validate a definition on the server (stores nothing)."""
    report = Api(url, api_key).call("POST", "/v1/pipelines/validate", json=_definition_body(file))
    console.print(
        f"[green]{file}: pipeline '{report['name']}' is valid[/]: {report['steps']} steps"
    )


@pipelines_app.command("list")
def pipelines_list(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    api = Api(url, api_key)
    table = Table("name", "status", "version", "updated", "by")
    cursor = None
    while True:
        page = api.call("GET", "/v1/pipelines", params={"cursor": cursor} if cursor else {})
        for p in page["items"]:
            table.add_row(
                p["name"], p["status"], str(p["current_version"]), p["updated_at"], p["updated_by"]
            )
        cursor = page["next_cursor"]
        if not cursor:
            break
    console.print(table)


@pipelines_app.command("show")
def pipelines_show(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    detail = Api(url, api_key).call("GET", f"/v1/pipelines/{name}")
    console.print(
        f"[cyan]{detail['name']}[/] {detail['status']} version {detail['version']} "
        f"(of {len(detail['versions'])}), updated by {detail['updated_by']}"
    )
    console.print(detail["source"] or json.dumps(detail["definition"], indent=2), markup=False)


schedule_app = typer.Typer(
    help="A pipeline's schedule: next fire times, pause, unpause.", no_args_is_help=True
)


def _show_schedule(body: dict[str, Any]) -> None:
    state = "paused" if body["paused"] else "active"
    running = "" if body["running"] else " (scheduler not running)"
    console.print(
        f"[cyan]{body['pipeline']}[/] {body['cron']} in {body['timezone']}: {state}{running}; "
        f"catchup {str(body['catchup']).lower()}, overlap {body['overlap']}"
    )
    if body["last_handled"]:
        console.print(f"last interval handled: up to {body['last_handled']}", markup=False)
    for fire in body["next_fires"]:
        console.print(f"  next: {fire}", markup=False)


@schedule_app.command("show")
def schedule_show(
    name: str,
    count: Annotated[int, typer.Option(help="How many next fire times.")] = 10,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """The next fire times in the pipeline's time zone, and the scheduler's state."""
    body = Api(url, api_key).call("GET", f"/v1/pipelines/{name}/schedule", params={"count": count})
    _show_schedule(body)


@schedule_app.command("pause")
def schedule_pause(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Stop firing (runs in flight continue)."""
    _show_schedule(Api(url, api_key).call("POST", f"/v1/pipelines/{name}/schedule/pause"))


@schedule_app.command("unpause")
def schedule_unpause(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Fire again; with catchup, the intervals missed while paused run first."""
    _show_schedule(Api(url, api_key).call("POST", f"/v1/pipelines/{name}/schedule/unpause"))


backfills_app = typer.Typer(
    help="Backfills: progress, pause, resume, cancel.", no_args_is_help=True
)


def _show_backfill(progress: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in progress["counts"].items())
    total = progress["total"] if progress["total"] is not None else "?"
    console.print(
        f"backfill [cyan]{progress['backfill_id']}[/] of {progress['pipeline']}: "
        f"{progress['state']}; {total} intervals; {counts}; in flight {progress['in_flight']} "
        f"(at most {progress['peak_in_flight']} of {progress['max_concurrency']})"
    )


def backfill(
    name: str,
    start: Annotated[str, typer.Option(help="First logical date (2026-01-01 or ISO with zone).")],
    end: Annotated[str, typer.Option(help="Intervals end at or before this.")],
    max_concurrency: Annotated[int, typer.Option(help="Runs at once, at most.")] = 4,
    reprocess: Annotated[
        str, typer.Option(help="missing (default), failed (and missing) or all.")
    ] = "missing",
    order: Annotated[str, typer.Option(help="forward or reverse.")] = "forward",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the dates; run none.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it until it ends.")] = False,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Run the pipeline for every interval of its schedule from START to END."""
    api = Api(url, api_key)
    body = {
        "start": start,
        "end": end,
        "max_concurrency": max_concurrency,
        "reprocess": reprocess,
        "order": order,
        "dry_run": dry_run,
        "params": _params(param or []),
    }
    result = api.call("POST", f"/v1/pipelines/{name}/backfills", json=body)
    if dry_run:
        for logical_date in result["logical_dates"]:
            console.print(logical_date, markup=False, highlight=False)
        errors.print(
            f"{len(result['logical_dates'])} of {result['total']} intervals would run "
            f"({result['skipped']} left alone per --reprocess {reprocess})"
        )
        return
    _show_backfill(result)
    while wait and result["state"] not in ("COMPLETED", "CANCELLED"):
        time.sleep(1)
        result = api.call("GET", f"/v1/backfills/{result['backfill_id']}")
        _show_backfill(result)


@backfills_app.command("show")
def backfills_show(backfill_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    _show_backfill(Api(url, api_key).call("GET", f"/v1/backfills/{backfill_id}"))


@backfills_app.command("pause")
def backfills_pause(backfill_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    _show_backfill(Api(url, api_key).call("POST", f"/v1/backfills/{backfill_id}/pause"))


@backfills_app.command("resume")
def backfills_resume(backfill_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    _show_backfill(Api(url, api_key).call("POST", f"/v1/backfills/{backfill_id}/resume"))


@backfills_app.command("cancel")
def backfills_cancel(backfill_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Stop it and cancel its runs in flight."""
    _show_backfill(Api(url, api_key).call("POST", f"/v1/backfills/{backfill_id}/cancel"))


def _show_run(run: dict[str, Any]) -> None:
    table = Table("step", "status", "attempts", "ms", "error", title=f"run {run['id']}")
    for step in run.get("steps", []):
        last = step["attempts"][-1] if step["attempts"] else {}
        table.add_row(
            step["step_id"],
            step["status"],
            str(len(step["attempts"])),
            str(last.get("duration_ms") or ""),
            (last.get("error") or "")[:80],
        )
    console.print(table)
    console.print(f"{run['pipeline']} v{run['version']}: [bold]{run['status']}[/]"
                  + (f"  {run['error']}" if run.get("error") else ""))  # fmt: skip
    for link, what in (("retry_of", "retries"), ("replay_of", "replays quarantined rows of")):
        if run.get(link):
            console.print(f"{what} run {run[link]}", highlight=False)


def run_state(run: dict[str, Any]) -> RunState:
    """A run as the API shows it, as the live view's state (each step's latest attempt)."""
    from schemas.run import RunState, RunStatus, StepResult, StepState, StepStatus

    steps = []
    for step in run.get("steps", []):
        last = step["attempts"][-1] if step["attempts"] else {}
        status = step["status"]
        steps.append(
            StepState(
                step_id=step["step_id"],
                type=step.get("type", ""),
                status=StepStatus(status) if status in set(StepStatus) else StepStatus.PENDING,
                attempt=last.get("attempt", 0),
                started_at=last.get("started_at"),
                finished_at=last.get("finished_at"),
                error=last.get("error"),
                result=StepResult(
                    rows_affected=last.get("rows_affected"),
                    outputs=last.get("outputs") or {},
                    tables=last.get("tables") or {},
                )
                if last.get("status") == StepStatus.SUCCEEDED
                else None,
            )
        )
    status = {"QUEUED": RunStatus.PENDING, "RETRYING": RunStatus.RUNNING}.get(
        run["status"], run["status"]
    )
    return RunState(
        run_id=run["id"],
        pipeline=run["pipeline"],
        status=RunStatus(status) if status in set(RunStatus) else RunStatus.RUNNING,
        started_at=run.get("started_at"),
        finished_at=run.get("finished_at"),
        steps=steps,
        error=run.get("error"),
    )


def _wait(api: Api, run: dict[str, Any]) -> int:
    """Follow the run: `laminar run`'s live step table on a terminal, a line per change
    otherwise; then the final table. 0 if it succeeded, 1 if not."""
    from pipeline_service.progress import ProgressView

    with ProgressView(console) as view:
        while True:
            view.update(run_state(run))
            if run["status"] in FINISHED:
                break
            time.sleep(0.5)
            run = api.call("GET", f"/v1/runs/{run['id']}")
        view.finish(run_state(run))
    return 0 if run["status"] == "SUCCEEDED" else 1


@runs_app.command("trigger")
def runs_trigger(
    name: str,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
    logical_date: Annotated[str | None, typer.Option(help="ISO date-time with zone")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same run.")] = None,
    rerun: Annotated[
        bool,
        typer.Option("--rerun", help="Run a logical date that has a scheduled run again."),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the run; exit 1 if it fails.")
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    api = Api(url, api_key)
    body: dict[str, Any] = {"params": _params(param or [])}
    if logical_date:
        body["logical_date"] = logical_date
    if rerun:
        body["rerun"] = True
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    run = api.call("POST", f"/v1/pipelines/{name}/runs", json=body, headers=headers)
    console.print(f"run [cyan]{run['id']}[/] ({run['status']})")
    if wait:
        raise typer.Exit(_wait(api, run))


@runs_app.command("list")
def runs_list(
    pipeline: str | None = None,
    status: str | None = None,
    limit: int = 50,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    params: dict[str, Any] = {"limit": limit}
    params.update({k: v for k, v in (("pipeline", pipeline), ("status", status)) if v})
    page = Api(url, api_key).call("GET", "/v1/runs", params=params)
    table = Table("id", "pipeline", "status", "created", "ms", "by")
    for r in page["items"]:
        table.add_row(
            r["id"], r["pipeline"], r["status"], r["created_at"],
            str(r["duration_ms"] or ""), r["actor"],
        )  # fmt: skip
    console.print(table)


@runs_app.command("show")
def runs_show(run_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    _show_run(Api(url, api_key).call("GET", f"/v1/runs/{run_id}"))


@runs_app.command("cancel")
def runs_cancel(run_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    run = Api(url, api_key).call("POST", f"/v1/runs/{run_id}/cancel")
    console.print(f"cancelling run {run['id']} ({run['status']})")


@runs_app.command("retry")
def runs_retry(
    run_id: str,
    from_step: Annotated[str | None, typer.Option(help="Re-run from this step on.")] = None,
    wait: Annotated[bool, typer.Option("--wait")] = False,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """A new run that reuses the steps that succeeded (all but --from-step and downstream)."""
    api = Api(url, api_key)
    run = api.call("POST", f"/v1/runs/{run_id}/retry", json={"from_step": from_step})
    console.print(f"run [cyan]{run['id']}[/] retries {run_id} ({run['status']})")
    if wait:
        raise typer.Exit(_wait(api, run))


quarantine_app = typer.Typer(
    help="Quarantined rows (dead letters of quality checks): replay them.", no_args_is_help=True
)


@quarantine_app.command("replay")
def quarantine_replay(
    run_id: str,
    check: str,
    step: Annotated[
        str | None, typer.Option(help="The quality step, when several have the check.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait")] = False,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """A new run, linked to RUN_ID, whose load step reads the (fixed) rows CHECK quarantined
    in that run (`{{ replay }}` in its templates)."""
    api = Api(url, api_key)
    run = api.call("POST", f"/v1/runs/{run_id}/quarantine/{check}/replay", json={"step": step})
    console.print(f"run [cyan]{run['id']}[/] replays {check} of {run_id} ({run['status']})")
    if wait:
        raise typer.Exit(_wait(api, run))


@tenants_app.command("create")
def tenants_create(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Create a tenant (needs the platform admin key)."""
    tenant = Api(url, api_key).call("POST", "/v1/tenants", json={"name": name})
    console.print(f"tenant [cyan]{tenant['name']}[/] created")


@keys_app.command("create")
def keys_create(
    name: str,
    tenant: Annotated[
        str | None, typer.Option(help="With the platform admin key: the tenant.")
    ] = None,
    scope: Annotated[str, typer.Option(help="read, operate or admin")] = "read",
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Create an API key; the key is printed once."""
    path = f"/v1/tenants/{tenant}/keys" if tenant else "/v1/keys"
    key = Api(url, api_key).call("POST", path, json={"name": name, "scope": scope})
    errors.print(f"key '{key['name']}' ({key['scope']}); store it now, it is not shown again:")
    console.print(key["key"], markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(pipelines_app, name="pipelines")
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(backfills_app, name="backfills")
    app.command("backfill")(backfill)
    app.add_typer(runs_app, name="runs")
    app.add_typer(quarantine_app, name="quarantine")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(keys_app, name="keys")
