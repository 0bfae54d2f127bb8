"""The checkpointer while a run goes: a step that finishes during an upload gets the next
checkpoint, and every snapshot is consistent (a step the history calls finished has its
output in the warehouse). The history here is a stand-in SQLite table written the way the
server writes (WAL, another connection); the warehouse is the real DuckDB engine."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import duckdb
import pytest

from pipeline_service.cluster_remote import Checkpointer, RemoteOptions, RemoteState
from pipeline_service.storage.checkpoints import Checkpoint
from pipeline_service.storage.snapshot import copy_warehouse_from, restore_snapshot
from schemas.run import RunState, RunStatus, StepState, StepStatus
from steps.engines.duckdb import DuckDBEngine
from tests.s3_standin import S3StandIn


def run_state(finished: list[str]) -> RunState:
    steps = [
        StepState(
            step_id=step,
            type="sql",
            status=StepStatus.SUCCEEDED if step in finished else StepStatus.RUNNING,
        )
        for step in ("a", "b", "c")
    ]
    return RunState(run_id="r", pipeline="p", status=RunStatus.RUNNING, steps=steps)


def finish_step(history: sqlite3.Connection, engine: DuckDBEngine, step: str) -> None:
    """As a step does: its output lands in the warehouse, then the history records it."""
    cursor = engine.cursor()
    cursor.execute(f"CREATE TABLE out_{step} AS SELECT '{step}' AS step")
    cursor.close()
    history.execute("INSERT INTO finished VALUES (?)", (step,))
    history.commit()


def restored(remote: RemoteState, checkpoint: Checkpoint, target: Path) -> tuple[set, set]:
    archive = target.with_suffix(".tar.gz")
    remote.store.fetch(checkpoint, archive)
    restore_snapshot(archive, target)
    history = {
        r[0] for r in sqlite3.connect(target / "temporal.db").execute("SELECT * FROM finished")
    }
    warehouse = duckdb.connect(str(target / "warehouse.duckdb"), read_only=True)
    tables = {r[0] for r in warehouse.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    warehouse.close()
    return history, tables


async def test_a_step_finishing_during_an_upload_gets_the_next_checkpoint(
    tmp_path: Path, s3: S3StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    history = sqlite3.connect(local / "temporal.db", check_same_thread=False)
    history.execute("PRAGMA journal_mode=wal")
    history.execute("CREATE TABLE finished (step TEXT)")
    history.commit()
    engine = DuckDBEngine(local / "warehouse.duckdb")
    options = RemoteOptions(url=f"s3://{s3.new_bucket()}/p", s3_endpoint=s3.endpoint)
    options.checkpoint_interval = options.checkpoint_interval * 0
    remote = RemoteState(options, local, "p")
    remote.acquire()  # a manifest switch checks that the lease is still ours
    uploading = asyncio.Event()
    loop = asyncio.get_running_loop()
    real_put = remote.store.storage.put

    def slow_put(key: str, data: object, **kwargs: object) -> str | None:
        if key.startswith("checkpoints/"):
            loop.call_soon_threadsafe(uploading.set)
            time.sleep(1.0)  # a large snapshot on a slow link
        return real_put(key, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(remote.store.storage, "put", slow_put)
    checkpointer = Checkpointer(remote)
    connection = engine.cursor()
    checkpointer.start(lambda target: copy_warehouse_from(connection, target))
    try:
        finish_step(history, engine, "a")
        checkpointer.observe(run_state(["a"]))
        await asyncio.wait_for(uploading.wait(), 10)
        finish_step(history, engine, "b")  # while the first upload is in flight
        checkpointer.observe(run_state(["a", "b"]))
        deadline = time.monotonic() + 20
        while checkpointer.checkpoints < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await checkpointer.stop()
        connection.close()
        engine.close()
        remote.release()
    manifest = remote.store.manifest()
    assert manifest is not None
    assert [c.finished_steps for c in manifest.checkpoints] == [["a"], ["a", "b"]]
    first_history, first_tables = restored(remote, manifest.checkpoints[0], tmp_path / "one")
    assert first_history == {"a"} and "out_a" in first_tables
    latest_history, latest_tables = restored(remote, manifest.checkpoints[1], tmp_path / "two")
    assert latest_history == {"a", "b"}
    assert {f"out_{s}" for s in latest_history} <= latest_tables
