"""`laminar run` with its state on S3 — moto's S3 server standing in for S3 — as a container
runs it: kill -9 mid-run, the local disk gone, a new start from the bucket resumes the run
without re-running finished steps; the lease keeps a second cluster off the same state."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from activities.steps import run_dir_name
from tests.e2e.conftest import REPO, Cli, wait_for
from tests.e2e.test_cli_run import HELLO, assert_clean, lines, write_resume_pipeline
from tests.e2e.test_cluster_durability import kill_9_whole_cluster
from tests.s3_standin import S3StandIn


def manifest(s3: S3StandIn, bucket: str, prefix: str) -> dict | None:
    try:
        body = s3.client().get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"]
    except s3.client().exceptions.NoSuchKey:
        return None
    return json.loads(body.read())


def remote_args(args: tuple, url: str) -> tuple:
    """The resume pipeline's arguments with the state on the object store."""
    args = list(args)
    at = args.index("--state-dir")
    args[at + 1] = url
    return (*args, "--checkpoint-interval", "0")


@pytest.mark.slow
def test_kill_9_lose_the_disk_and_resume_from_the_bucket(
    cli: Cli, tmp_path: Path, s3: S3StandIn
) -> None:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/jobs/resume"
    args, files = write_resume_pipeline(tmp_path, first_sleep=30)
    args = remote_args(args, url)
    env = {**s3.env(), "LAMINAR_LEASE_TTL": "2s"}
    crashed = cli.start(*args, env=env)
    wait_for(lambda: lines(files / "second"), 60, "step `second` to start")

    def first_checkpointed() -> bool:
        found = manifest(s3, bucket, "jobs/resume")
        return bool(found) and "first" in found["checkpoints"][-1]["finished_steps"]

    wait_for(first_checkpointed, 30, "a checkpoint with step `first` finished")
    local = tmp_path / "home" / ".cache" / "laminar" / "remote-state"
    kill_9_whole_cluster(crashed, next(local.iterdir()))
    shutil.rmtree(local)  # the container's disk is gone

    resumed = cli.run(*args, env=env, timeout=120)
    assert resumed.code == 0, resumed.details
    assert_clean(resumed)
    assert "restored checkpoint" in resumed.stdout, resumed.details
    assert "resuming" in resumed.stdout, resumed.details
    assert len(lines(files / "counter")) == 1  # `first` finished before the crash: not re-run
    assert len(lines(files / "second")) == 2
    assert len(lines(files / "third")) == 1
    final = manifest(s3, bucket, "jobs/resume")
    assert final is not None
    assert final["checkpoints"][-1]["finished_steps"] == ["first", "second", "third"]
    assert not s3.keys(bucket, "jobs/resume/lease")  # released at the end

    listed = cli.run("checkpoint", "list", "--state-dir", url, env=env)
    assert listed.code == 0, listed.details
    assert final["latest"] in listed.stdout

    again = cli.run(*args, env=env, timeout=60)  # the run finished: a new one starts
    assert again.code == 0, again.details
    assert "resuming" not in again.stdout
    assert len(lines(files / "counter")) == 2


@pytest.mark.slow
def test_a_second_cluster_on_the_same_remote_state_is_refused(
    cli: Cli, tmp_path: Path, s3: S3StandIn
) -> None:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/state"
    args, files = write_resume_pipeline(tmp_path, first_sleep=30)
    args = remote_args(args, url)
    env = {**s3.env(), "LAMINAR_LEASE_TTL": "3s"}
    first = cli.start(*args, env=env)
    wait_for(lambda: lines(files / "second"), 60, "step `second` to start")
    other_home = {**env, "XDG_CACHE_HOME": str(tmp_path / "other-machine")}
    second = cli.run(*args, env=other_home, timeout=60)
    assert second.code == 2, second.details
    assert "in use by another laminar run" in second.stderr, second.details
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(60).code == 143


def test_the_fargate_example_task_against_the_s3_standin(
    cli: Cli, tmp_path: Path, s3: S3StandIn
) -> None:
    """examples/deploy/fargate-task-definition.json as Fargate would run it (its command, its
    environment with the seed's variable names), with moto's S3 server standing in for S3."""
    task = json.loads((REPO / "examples/deploy/fargate-task-definition.json").read_text())
    [container] = task["containerDefinitions"]
    bucket = s3.new_bucket()
    env = {
        e["name"]: e["value"].replace("s3://my-laminar-state/", f"s3://{bucket}/")
        for e in container["environment"]
    }
    assert env["LAMINAR_CHECKPOINT_INTERVAL"] == "10000"  # ms: checkpoints at most every 10 s
    env.update(s3.env(), LAMINAR_CHEKPOINT_URL="s3://typo")
    result = cli.run(*container["command"], env=env, cwd=REPO)
    assert result.code == 0, result.details
    logged = [json.loads(line) for line in result.stdout.splitlines()]  # LAMINAR_LOG_FORMAT
    assert any(
        "LAMINAR_CHEKPOINT_URL is ignored; did you mean LAMINAR_CHECKPOINT_URL?" in r["message"]
        for r in logged
    ), result.details
    assert any(r["message"] == "run SUCCEEDED" for r in logged), result.details
    found = manifest(s3, bucket, "sales-report")
    assert found is not None and found["pipeline"] == "sales-report"
    latest = found["checkpoints"][-1]
    assert latest["finished_steps"] == sorted(
        ["load_sales", "by_region", "by_product", "summary", "report"]
    )
    run_dir = run_dir_name(latest["run_id"])
    artifacts = s3.keys(bucket, "artifacts/")
    assert f"artifacts/{run_dir}/logs/laminar.log" in artifacts, artifacts
    assert f"artifacts/{run_dir}/work/{run_dir}/report/step.log" in artifacts, artifacts


def test_remote_state_of_another_pipeline_needs_force(
    cli: Cli, tmp_path: Path, s3: S3StandIn
) -> None:
    url = f"s3://{s3.new_bucket()}/p"
    env = s3.env()
    assert cli.run("run", "--once", "--no-ui", HELLO, "-s", url, env=env).code == 0
    other = cli.run(
        "run", "--once", "--no-ui", "--sql", "SELECT 1", "-n", "other", "-s", url, env=env
    )
    assert other.code == 2, other.details
    assert "belongs to pipeline 'hello'" in other.stderr
    forced = cli.run(
        "run",
        "--once",
        "--no-ui",
        "--sql",
        "SELECT 1",
        "-n",
        "other",
        "-s",
        url,
        "--force",
        env=env,
    )
    assert forced.code == 0, forced.details
    missing = cli.run(
        "run",
        "--once",
        "--no-ui",
        "--sql",
        "SELECT 1",
        "-n",
        "other",
        "-s",
        url,
        "--restore-from",
        "nope",
        env=env,
    )
    assert missing.code == 2 and "no checkpoint nope" in missing.stderr, missing.details


def test_storage_test_command(cli: Cli, tmp_path: Path, s3: S3StandIn) -> None:
    ok = cli.run("storage", "test", "--url", f"s3://{s3.new_bucket()}/x", env=s3.env())
    assert ok.code == 0, ok.details
    assert "can write, read, list and delete" in ok.stdout
    missing = cli.run("storage", "test", "--url", "s3://laminar-no-such-bucket/x", env=s3.env())
    assert missing.code == 2, missing.details
    assert "does not exist" in missing.stderr
