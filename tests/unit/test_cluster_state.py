"""State-directory ownership, locking and settings precedence of `laminar run` (no server)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pipeline_service.cluster import (
    STATE_FILE,
    ClusterError,
    ClusterState,
    claim_state_dir,
    state_dir_lock,
)
from pipeline_service.settings import load_run_settings


def test_fresh_directory_is_claimed(tmp_path: Path) -> None:
    state = claim_state_dir(tmp_path / "s", "alpha", force=False)
    assert state.pipeline == "alpha" and state.current_run is None
    assert ClusterState.read(tmp_path / "s") == state


def test_same_pipeline_keeps_its_state(tmp_path: Path) -> None:
    state = claim_state_dir(tmp_path, "alpha", force=False)
    state.current_run = "default/alpha/manual__x"
    state.write(tmp_path)
    (tmp_path / "temporal.db").write_text("db")
    again = claim_state_dir(tmp_path, "alpha", force=False)
    assert again.current_run == "default/alpha/manual__x"
    assert (tmp_path / "temporal.db").exists()


def test_other_pipeline_is_refused_naming_both(tmp_path: Path) -> None:
    claim_state_dir(tmp_path, "alpha", force=False)
    with pytest.raises(ClusterError) as refused:
        claim_state_dir(tmp_path, "beta", force=False)
    message = str(refused.value)
    assert "'alpha'" in message and "'beta'" in message and "--force" in message


def test_force_discards_only_laminar_files(tmp_path: Path) -> None:
    claim_state_dir(tmp_path, "alpha", force=False)
    for name in ("temporal.db", "temporal.db-wal", "temporal.db.pid", "warehouse.duckdb"):
        (tmp_path / name).write_text("x")
    (tmp_path / "work" / "run" / "step").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    (tmp_path / "mine.txt").write_text("user file")
    state = claim_state_dir(tmp_path, "beta", force=True)
    assert state.pipeline == "beta"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["mine.txt", STATE_FILE])


def test_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ClusterError, match="not a Laminar state file"):
        claim_state_dir(tmp_path, "alpha", force=False)


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    with (
        state_dir_lock(tmp_path),
        pytest.raises(ClusterError, match="in use"),
        state_dir_lock(tmp_path),
    ):
        pass
    with state_dir_lock(tmp_path):  # released
        pass


def test_settings_precedence_cli_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "laminar.yaml"
    config.write_text(
        "parallelism: 2\nstate_dir: /from/file\nparams: {region: EU}\nshutdown_grace: 7\n"
    )
    from_file = load_run_settings(config)
    assert from_file.parallelism == 2
    assert from_file.state_dir == "/from/file"
    assert from_file.params == {"region": "EU"}
    assert from_file.shutdown_grace == timedelta(seconds=7)

    monkeypatch.setenv("LAMINAR_PARALLELISM", "3")
    monkeypatch.setenv("LAMINAR_STATE_DIR", "/from/env")
    from_env = load_run_settings(config)
    assert (from_env.parallelism, from_env.state_dir) == (3, "/from/env")

    from_cli = load_run_settings(config, parallelism=4, state_dir=None)
    assert (from_cli.parallelism, from_cli.state_dir) == (4, "/from/env")


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "laminar.yaml"
    config.write_text("paralelism: 2\n")
    with pytest.raises(ValueError, match="paralelism"):
        load_run_settings(config)
