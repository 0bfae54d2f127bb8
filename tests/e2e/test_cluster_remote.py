"""`laminar run` with its state on S3 — moto's S3 server standing in for S3 — as a container
runs it: kill -9 mid-run, the local disk gone, a new start from the bucket resumes the run
without re-running finished steps; the lease keeps a second cluster off the same state."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activities.steps import run_dir_name
from pipeline_service.storage.checkpoints import CheckpointStore
from pipeline_service.storage.encryption import SnapshotCipher
from pipeline_service.storage.store import ObjectStorage
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


def test_encrypted_checkpoints_need_their_key_and_never_hold_it(
    cli: Cli, tmp_path: Path, s3: S3StandIn
) -> None:
    """LAMINAR_CHECKPOINT_KEY: the bucket holds AES-256-GCM objects; a start without the key,
    with another key or with a malformed one exits 2 with the reason; with the key it
    restores. The key is in no snapshot and no output or log."""
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/secure"
    key = base64.b64encode(os.urandom(32)).decode()
    env = {**s3.env(), "LAMINAR_CHECKPOINT_KEY": key}
    first = cli.run("run", "--once", "--no-ui", HELLO, "-s", url, env=env)
    assert first.code == 0, first.details
    found = manifest(s3, bucket, "secure")
    assert found is not None
    latest = found["checkpoints"][-1]
    assert latest["encryption"] == "AES-256-GCM" and latest["key"].endswith(".tar.gz.enc")
    cipher = SnapshotCipher.from_setting(key)
    assert latest["key_id"] == cipher.key_id

    # The key appears in no snapshot (decrypted), no output, no file of the local copy.
    store = CheckpointStore(ObjectStorage(url, s3_endpoint=s3.endpoint), cipher=cipher)
    archive = tmp_path / "snapshot.tar.gz"
    store.fetch(store.manifest().latest, archive)  # type: ignore[union-attr,arg-type]
    secrets = (key.encode(), cipher.key)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        assert any(m.name.endswith("temporal.db") for m in members)
        for member in members:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert not any(secret in data for secret in secrets), member.name
    assert key not in first.output
    local = tmp_path / "home" / ".cache" / "laminar" / "remote-state"
    for path in (p for p in local.rglob("*") if p.is_file()):
        assert not any(secret in path.read_bytes() for secret in secrets), path

    keyless = {k: v for k, v in env.items() if k != "LAMINAR_CHECKPOINT_KEY"}
    listed = cli.run("checkpoint", "list", "--state-dir", url, env=keyless)  # needs no key
    assert listed.code == 0, listed.details
    assert "AES-256-GCM" in listed.stdout and cipher.key_id in listed.stdout, listed.details
    refused = cli.run("run", "--once", "--no-ui", HELLO, "-s", url, env=keyless)
    assert refused.code == 2, refused.details
    assert f"checkpoint {latest['id']} is encrypted (AES-256-GCM, key id {cipher.key_id})" in (
        refused.stderr
    ), refused.details
    assert "set LAMINAR_CHECKPOINT_KEY to the key it was written with" in refused.stderr

    other = {**env, "LAMINAR_CHECKPOINT_KEY": base64.b64encode(os.urandom(32)).decode()}
    wrong = cli.run("run", "--once", "--no-ui", HELLO, "-s", url, env=other)
    assert wrong.code == 2, wrong.details
    assert f"with key id {cipher.key_id}, but LAMINAR_CHECKPOINT_KEY is key id" in wrong.stderr

    bad_value = "not-a-key-" + key[:8]
    malformed = cli.run(
        "run", "--once", "--no-ui", HELLO, "-s", url,
        env={**env, "LAMINAR_CHECKPOINT_KEY": bad_value},
    )  # fmt: skip
    assert malformed.code == 2, malformed.details
    assert "checkpoint_key: must be 32 random bytes in base64" in malformed.stderr
    assert bad_value not in malformed.output

    again = cli.run("run", "--once", "--no-ui", HELLO, "-s", url, env=env)
    assert again.code == 0, again.details
    assert f"restored checkpoint {latest['id']}" in again.stdout, again.details
    assert manifest(s3, bucket, "secure")["checkpoints"][-1]["encryption"] == "AES-256-GCM"  # type: ignore[index]


@pytest.mark.slow
def test_a_cluster_that_loses_its_lease_stops_and_the_new_holder_continues(
    cli: Cli, tmp_path: Path, s3: S3StandIn
) -> None:
    """Another cluster takes the lease over mid-run (written here as that cluster would once
    our lease had lapsed): the old one stops with exit 3, takes no further checkpoint and
    leaves the new holder's lease alone; a cluster started next continues the run from the
    latest checkpoint without re-running the finished step."""
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/lost"
    args, files = write_resume_pipeline(tmp_path, first_sleep=20)
    args = remote_args(args, url)
    env = {**s3.env(), "LAMINAR_LEASE_TTL": "3s"}
    old = cli.start(*args, env=env)
    wait_for(lambda: lines(files / "second"), 60, "step `second` to start")

    def first_checkpointed() -> bool:
        found = manifest(s3, bucket, "lost")
        return bool(found) and "first" in found["checkpoints"][-1]["finished_steps"]

    wait_for(first_checkpointed, 30, "a checkpoint with step `first` finished")
    before = manifest(s3, bucket, "lost")
    assert before is not None
    other = {
        "holder": "other-host:1:feedbeef",
        "expires_at": (datetime.now(UTC) + timedelta(seconds=4)).isoformat(),
        "ttl_seconds": 3,
    }
    s3.client().put_object(Bucket=bucket, Key="lost/lease.json", Body=json.dumps(other))

    stopped = old.wait(60)
    assert stopped.code == 3, stopped.details
    assert "lease on s3://" in stopped.stdout and "taken by other-host:1:feedbeef" in (
        stopped.stdout
    ), stopped.details
    assert "another laminar run owns this state" in stopped.stdout
    assert manifest(s3, bucket, "lost") == before  # no checkpoint after the loss
    lease = s3.client().get_object(Bucket=bucket, Key="lost/lease.json")["Body"].read()
    assert json.loads(lease)["holder"] == "other-host:1:feedbeef"  # not released by the old

    new_home = {**env, "XDG_CACHE_HOME": str(tmp_path / "new-machine")}
    continued = cli.run(*args, env=new_home, timeout=120)  # waits for that lease to lapse
    assert continued.code == 0, continued.details
    assert f"restored checkpoint {before['latest']}" in continued.stdout, continued.details
    assert "resuming" in continued.stdout, continued.details
    assert len(lines(files / "counter")) == 1  # `first` is not run again
    assert len(lines(files / "third")) == 1
