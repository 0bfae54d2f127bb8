"""`laminar checkpoint list` and `laminar storage test`: the object-store side of the CLI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline_service.storage.store import (
    ObjectNotFound,
    ObjectStorage,
    StorageError,
    describe,
    is_url,
)

checkpoint_app = typer.Typer(help="Checkpoints of a remote state dir.", no_args_is_help=True)
storage_app = typer.Typer(help="Object-store locations.", no_args_is_help=True)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

EndpointOption = Annotated[
    str | None,
    typer.Option(
        envvar="LAMINAR_S3_ENDPOINT", help="S3-compatible endpoint URL (LAMINAR_S3_ENDPOINT)."
    ),
]


def _fail(message: str) -> typer.Exit:
    errors.print(message, style="bold red", highlight=False, markup=False)
    return typer.Exit(2)


@checkpoint_app.command("list")
def list_checkpoints(
    state_dir: Annotated[
        str,
        typer.Option(
            "--state-dir",
            "-s",
            envvar=["LAMINAR_STATE_DIR", "LAMINAR_CHECKPOINT_URL"],
            help="The remote state: s3:// gs:// az:// file:// URL.",
        ),
    ],
    s3_endpoint: EndpointOption = None,
) -> None:
    """The checkpoints kept at a remote state dir, oldest first; the last is the latest."""
    from pipeline_service.storage.checkpoints import CheckpointStore

    if not is_url(state_dir):
        raise _fail(f"{state_dir}: checkpoints exist only for s3:// gs:// az:// file:// state")
    try:
        manifest = CheckpointStore(ObjectStorage(state_dir, s3_endpoint=s3_endpoint)).manifest()
    except StorageError as exc:
        raise _fail(str(exc)) from None
    if manifest is None or not manifest.checkpoints:
        console.print(f"no checkpoints at {describe(state_dir)}", highlight=False)
        return
    table = Table(title=f"pipeline {manifest.pipeline} at {describe(state_dir)}")
    table.add_column("id", no_wrap=True)
    for column in ("created", "size", "run", "finished steps", "encryption"):
        table.add_column(column)
    for checkpoint in manifest.checkpoints:
        latest = " (latest)" if checkpoint is manifest.latest else ""
        table.add_row(
            checkpoint.id + latest,
            checkpoint.created_at,
            f"{checkpoint.size:,} B",
            checkpoint.run_id or "",
            str(len(checkpoint.finished_steps)),
            f"{checkpoint.encryption} (key id {checkpoint.key_id})"
            if checkpoint.encryption
            else "",
        )
    console.print(table)


@storage_app.command("test")
def test_storage(
    url: Annotated[str, typer.Option(help="Where to test: s3:// gs:// az:// file:// or a path.")],
    s3_endpoint: EndpointOption = None,
) -> None:
    """Check that Laminar can write, read, list and delete objects at URL."""
    try:
        storage = ObjectStorage(url, s3_endpoint=s3_endpoint)
    except StorageError as exc:
        raise _fail(str(exc)) from None
    key = f".laminar-storage-test/{os.getpid()}-{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().bytes
    steps: list[tuple[str, Callable[[], object]]] = [
        ("write", lambda: storage.put(key, payload)),
        ("read", lambda: _check_read(storage, key, payload)),
        ("list", lambda: _check_listed(storage, key)),
        ("delete", lambda: storage.delete(key)),
    ]
    for permission, step in steps:
        try:
            step()
        except ObjectNotFound as exc:
            console.print(f"{permission:<7} FAILED", highlight=False)
            raise _fail(
                f"{describe(url)}: the bucket (or container) does not exist, or the "
                f"object vanished; create it first.\n  {exc}"
            ) from None
        except StorageError as exc:
            console.print(f"{permission:<7} FAILED", highlight=False)
            raise _fail(
                f"{describe(url)}: Laminar cannot {permission} objects there; grant that "
                f"permission (S3: s3:{_S3_ACTIONS[permission]}).\n  {exc}"
            ) from None
        console.print(f"{permission:<7} ok", highlight=False)
    console.print(f"{describe(url)}: Laminar can write, read, list and delete there")


_S3_ACTIONS = {
    "write": "PutObject",
    "read": "GetObject",
    "list": "ListBucket",
    "delete": "DeleteObject",
}


def _check_read(storage: ObjectStorage, key: str, payload: bytes) -> None:
    data, _ = storage.get(key)
    if data != payload:
        raise StorageError(f"read back {len(data)} bytes that differ from what was written")


def _check_listed(storage: ObjectStorage, key: str) -> None:
    if key not in {info.key for info in storage.list(key.rsplit("/", 1)[0] + "/")}:
        raise ObjectNotFound(f"the object just written is not in the listing ({key})")
