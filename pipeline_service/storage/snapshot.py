"""A consistent snapshot of a local state dir, as one tar.gz, and its restore.

What goes in (an allow-list, so a secret key file beside the databases never does):
1. every SQLite database at the top of the state dir (the Temporal server's, and the
   service's once it has one), each through SQLite's online backup API: a consistent copy
   while the server keeps writing (its WAL included);
2. the DuckDB warehouse, *after* the SQLite databases, through a DuckDB connection
   (`COPY FROM DATABASE` in one read transaction). A step's outputs are in the warehouse
   before Temporal records the step as finished, so a warehouse copied later than the history
   holds at least every output the history says exists; at worst it also holds the output of
   a step the history still calls running, which that step's re-run replaces;
3. `laminar-state.json` and the step work dirs (`work/`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

SQLITE_HEADER = b"SQLite format 3\x00"
WAREHOUSE = "warehouse.duckdb"
STATE_FILE = "laminar-state.json"
WORK_DIR = "work"
ARCHIVE_ROOT = "state"

WarehouseCopier = Callable[[Path], None]
"""Writes a consistent copy of the warehouse to the given path."""


@dataclass(frozen=True)
class SnapshotFile:
    path: Path
    """The tar.gz, in a temporary directory the caller removes (`cleanup()`)."""
    size: int
    databases: tuple[str, ...]

    def cleanup(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


def sqlite_databases(state_dir: Path) -> list[Path]:
    """The SQLite files at the top of the state dir, Temporal's first (see module docstring)."""
    found = []
    for path in sorted(state_dir.iterdir()):
        if not path.is_file() or path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        with contextlib.suppress(OSError), path.open("rb") as file:
            if file.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                found.append(path)
    return sorted(found, key=lambda p: (p.name != "temporal.db", p.name))


def backup_sqlite(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy of a database another process is writing."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def copy_warehouse_from(connection: duckdb.DuckDBPyConnection, target: Path) -> None:
    """Copy the connection's database to `target` in one transaction, while steps may write."""
    cursor = connection.cursor()
    try:
        row = cursor.execute("SELECT current_database()").fetchone()
        source = str(row[0]) if row else "memory"
        alias = "laminar_snapshot"
        cursor.execute(f"ATTACH '{_sql_string(str(target))}' AS {alias}")
        try:
            cursor.execute(f'COPY FROM DATABASE "{source}" TO {alias}')
        finally:
            cursor.execute(f"DETACH {alias}")
    finally:
        cursor.close()


def copy_warehouse_file(warehouse: Path) -> WarehouseCopier:
    """A copier for a warehouse no process has open (the run has stopped)."""

    def copy(target: Path) -> None:
        if warehouse.exists():
            connection = duckdb.connect(str(warehouse))
            try:
                copy_warehouse_from(connection, target)
            finally:
                connection.close()

    return copy


def take_snapshot(state_dir: Path, copy_warehouse: WarehouseCopier) -> SnapshotFile:
    """Write a snapshot of `state_dir` to a tar.gz in a new temporary directory."""
    scratch = Path(tempfile.mkdtemp(prefix="laminar-snapshot-"))
    try:
        staged = scratch / ARCHIVE_ROOT
        staged.mkdir()
        databases = []
        for database in sqlite_databases(state_dir):
            backup_sqlite(database, staged / database.name)
            databases.append(database.name)
        copy_warehouse(staged / WAREHOUSE)  # no earlier than the SQLite databases
        state_file = state_dir / STATE_FILE
        if state_file.exists():
            shutil.copy2(state_file, staged / STATE_FILE)
        archive = scratch / "snapshot.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
            tar.add(staged, arcname=ARCHIVE_ROOT)
            work = state_dir / WORK_DIR
            if work.is_dir():
                _add_tree(tar, work, f"{ARCHIVE_ROOT}/{WORK_DIR}")
        return SnapshotFile(archive, archive.stat().st_size, tuple(databases))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _add_tree(tar: tarfile.TarFile, root: Path, arcname: str) -> None:
    """Add a directory that running steps may change meanwhile: files that vanish are skipped
    (their step is still running; its re-run after a restore writes them again)."""
    for directory, _dirs, files in os.walk(root):
        relative = Path(directory).relative_to(root)
        with contextlib.suppress(FileNotFoundError):
            tar.add(directory, arcname=f"{arcname}/{relative}", recursive=False)
        for name in files:
            path = Path(directory) / name
            if path.is_symlink():
                continue  # never follow a link a step script made out of its work dir
            with contextlib.suppress(FileNotFoundError):
                tar.add(path, arcname=f"{arcname}/{relative / name}", recursive=False)


def restore_snapshot(archive: Path, state_dir: Path) -> None:
    """Unpack a snapshot into an empty (or wiped) state dir."""
    with tempfile.TemporaryDirectory(prefix="laminar-restore-", dir=state_dir.parent) as tmp:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, links out, devices
        unpacked = Path(tmp) / ARCHIVE_ROOT
        if not unpacked.is_dir():
            raise ValueError(f"{archive} is not a Laminar snapshot")
        state_dir.mkdir(parents=True, exist_ok=True)
        for entry in unpacked.iterdir():
            os.replace(entry, state_dir / entry.name)


def _sql_string(text: str) -> str:
    return text.replace("'", "''")
