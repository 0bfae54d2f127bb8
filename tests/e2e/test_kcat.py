"""kcat (the Debian package `kcat`, a Kafka client nobody here wrote) reads a real run's
lifecycle events from the session's Tansu broker: keys, headers and JSON bodies as the
README and the generated JSON Schemas say.

kcat is not on PyPI: `make test` installs it with apt-get when run as root. Without it this
test fails under CI (`CI` set) with the remedy, and skips on a developer's machine.

kcat runs on the librdkafka that confluent-kafka bundles (the one Laminar's relay uses), not on
Debian bookworm's librdkafka 2.0.2: that version cannot parse the ApiVersions v3 response of
the Tansu test broker ("Read underflow ... rd_kafka_handle_ApiVersion"; Tansu sends all four
KIP-584 tagged fields, at their default values, which Apache Kafka omits), so it never gets
to read a message. The kcat program itself, its JSON envelope and its header decoding are
Debian's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import confluent_kafka
import jsonschema_rs
import pytest

from pipeline_service.events.broker import EmbeddedBroker
from schemas.event_docs import event_json_schema
from schemas.events import EventType
from tests.e2e.conftest import EXAMPLES, Cli
from tests.e2e.test_run_kafka import outbox_ids

MISSING = (
    "kcat is not installed: `make test` installs it (apt-get install -y kcat) when run as root; "
    "otherwise install the Debian package kcat"
)


def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path


def bundled_librdkafka(tmp_path: Path) -> dict[str, str]:
    """An environment in which kcat loads confluent-kafka's librdkafka (see the docstring)."""
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka-*.so.1"))
    assert found, f"no bundled librdkafka in {libs}"
    lib_dir = tmp_path / "librdkafka"
    lib_dir.mkdir()
    (lib_dir / "librdkafka.so.1").symlink_to(found[0])
    return {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}


def kcat_consume(bootstrap: str, topic: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The whole topic through kcat: from the beginning, exit at the end, JSON envelopes."""
    version = subprocess.run([kcat(), "-V"], capture_output=True, text=True, env=env, check=True)
    assert f"librdkafka {confluent_kafka.libversion()[0]} " in version.stdout, version.stdout
    done = subprocess.run(
        [kcat(), "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"kcat exited {done.returncode}:\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def headers_of(envelope: dict[str, Any]) -> dict[str, str]:
    """kcat 1.7 prints headers as a flat [name, value, name, value, ...] list (its help says
    an object; both are accepted)."""
    raw = envelope.get("headers") or []
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(raw[i]): str(raw[i + 1]) for i in range(0, len(raw), 2)}


def test_kcat_reads_a_runs_events_keyed_with_headers_and_schema_valid_bodies(
    cli: Cli, tmp_path: Path, kafka_broker: EmbeddedBroker
) -> None:
    kcat()  # missing: fail or skip before the run
    state, topic = tmp_path / "state", f"kcat-events-{uuid.uuid4().hex[:8]}"
    result = cli.run(
        "run", "--once", "--no-ui", EXAMPLES / "handoff.yaml", "--state-dir", state,
        "--kafka", kafka_broker.bootstrap_servers,
        env={"LAMINAR_EVENTS_TOPIC": topic},
    )  # fmt: skip
    assert result.code == 0, result.details
    stored = outbox_ids(state)  # (key, event id) in commit order
    assert stored, "the run wrote no events"

    envelopes = kcat_consume(kafka_broker.bootstrap_servers, topic, bundled_librdkafka(tmp_path))
    assert len(envelopes) == len(stored), (len(envelopes), stored)

    partitions: dict[str, set[int]] = defaultdict(set)
    by_key: dict[str, list[str]] = defaultdict(list)
    run_types: list[str] = []
    for envelope in envelopes:  # one partition's messages appear in offset order
        assert envelope["topic"] == topic
        key, body = envelope["key"], json.loads(envelope["payload"])
        jsonschema_rs.validate(event_json_schema(EventType(body["type"])), body)
        assert body["specversion"] == "1.0" and body["dataschema"].endswith(body["type"])
        headers = headers_of(envelope)
        assert headers["ce_id"] == body["id"], headers
        assert headers["ce_type"] == body["type"], headers
        assert headers["laminar_tenant"] == body["data"]["tenant"] == "default", headers
        assert headers["ce_specversion"] == "1.0", headers
        assert headers["content-type"] == "application/cloudevents+json", headers
        if key.startswith("pipeline:"):  # definition events are keyed by the pipeline
            assert body["data"]["pipeline"] == "handoff" and "run_id" not in body["data"], body
        else:  # run events by the run id, which is also the CloudEvent's subject
            assert key == body["subject"] == body["data"]["run_id"], body
            run_types.append(body["type"])
        partitions[key].add(envelope["partition"])
        by_key[key].append(body["id"])

    # Per key: one partition, and the outbox's commit order.
    assert all(len(found) == 1 for found in partitions.values()), dict(partitions)
    expected: dict[str, list[str]] = defaultdict(list)
    for key, event_id in stored:
        expected[key].append(event_id)
    assert by_key == expected
    assert run_types[:2] == ["PIPELINE_QUEUED", "PIPELINE_STARTED"], run_types
    assert run_types.count("PIPELINE_STEP_STARTED") == 2, run_types
    assert run_types.count("PIPELINE_STEP_COMPLETED") == 2, run_types
    assert run_types[-1] == "PIPELINE_SUCCEEDED", run_types
