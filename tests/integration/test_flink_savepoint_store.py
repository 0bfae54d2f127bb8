"""A streaming Flink step's `savepoint_path` on an object store: Laminar lists it (through
pipeline_service/storage's obstore client) for the newest savepoint or retained checkpoint a
new run starts from. S3 here is the moto stand-in (tests/s3_standin.py): no cloud store is
reachable, and the local Flink cluster cannot write to S3 itself (the apache-flink wheel ships
no flink-s3-fs plugin), so the layout Flink writes is laid out with boto3."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schemas.pipeline import FlinkStep
from steps.base import StepError
from steps.flink_rest import FlinkRest
from steps.flink_stream import find_restore_point, newest_saved_point
from tests.s3_standin import S3StandIn

JOB = "0123456789abcdef0123456789abcdef"


def put(s3: S3StandIn, bucket: str, *keys: str) -> None:
    for key in keys:
        s3.client().put_object(Bucket=bucket, Key=key, Body=b"flink")


def step(savepoint_path: str) -> FlinkStep:
    return FlinkStep.model_validate(
        {
            "id": "enrich",
            "type": "flink",
            "mode": "streaming",
            "sql": "INSERT INTO dst SELECT * FROM src;",
            "savepoint_path": savepoint_path,
        }
    )


async def test_the_newest_savepoint_or_checkpoint_is_found_on_s3(
    s3: S3StandIn, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    root = f"s3://{bucket}/savepoints/enrich"
    assert newest_saved_point(root, s3.endpoint) is None  # nothing saved yet
    # S3 dates objects to the second: each newer one is written a second later.
    put(s3, bucket, "savepoints/enrich/savepoint-1a2b3c-aaaaaaaaaaaa/_metadata")
    put(s3, bucket, "savepoints/enrich/savepoint-1a2b3c-aaaaaaaaaaaa/op-state-1")
    time.sleep(1.1)
    put(s3, bucket, f"savepoints/enrich/checkpoints/{JOB}/chk-7/_metadata")
    newest = newest_saved_point(root, s3.endpoint)
    assert newest is not None
    assert newest.path == f"{root}/checkpoints/{JOB}/chk-7"
    assert (newest.kind, newest.job_id, newest.checkpoint_id) == ("checkpoint", JOB, 7)

    time.sleep(1.1)
    put(s3, bucket, "savepoints/enrich/savepoint-4d5e6f-bbbbbbbbbbbb/_metadata")
    time.sleep(1.1)
    # Newer still, but not restore points: a checkpoint still being written (no _metadata yet),
    # shared state files, a savepoint of another step under a neighbouring prefix.
    put(
        s3,
        bucket,
        f"savepoints/enrich/checkpoints/{JOB}/chk-8/op-state-1",
        f"savepoints/enrich/checkpoints/{JOB}/shared/sst-000001",
        "savepoints/enrich-other/savepoint-999999-cccccccccccc/_metadata",
        "savepoints/enrich/notes/_metadata.bak",
    )
    newest = newest_saved_point(root, s3.endpoint)
    assert newest is not None and newest.kind == "savepoint"
    assert newest.path == f"{root}/savepoint-4d5e6f-bbbbbbbbbbbb"
    # The path may name one savepoint itself.
    one = newest_saved_point(f"{root}/savepoint-1a2b3c-aaaaaaaaaaaa", s3.endpoint)
    assert one is not None and one.path == f"{root}/savepoint-1a2b3c-aaaaaaaaaaaa"

    # A new run of the step (no earlier jobs, an empty work dir) starts from it.
    rest = FlinkRest("http://127.0.0.1:9")  # not asked: there are no earlier jobs
    try:
        point = await find_restore_point(rest, step(root), tmp_path, [], s3.endpoint)
    finally:
        await rest.close()
    assert point == newest


async def test_an_unreadable_savepoint_path_stops_the_start_with_its_reason(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """Starting the job without the state it may have left would lose that state silently."""
    missing = f"s3://laminar-no-such-bucket-{int(time.time())}/savepoints/enrich"
    rest = FlinkRest("http://127.0.0.1:9")
    try:
        with pytest.raises(StepError) as info:
            await find_restore_point(rest, step(missing), tmp_path, [], s3.endpoint)
    finally:
        await rest.close()
    message = info.value.message
    assert message.startswith("savepoint_path: cannot look for the newest savepoint")
    assert f"cannot list {missing}" in message
    assert info.value.retryable and info.value.error_type == "FlinkSavepointPathUnreadable"
