"""Laminar's data converter: the SDK's pydantic payloads, byte for byte, and one cache of type
adapters for the process (a worker makes a new payload converter for every workflow run)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter

from pipeline_service.temporal import client
from schemas.loading import validate_pipeline
from schemas.run import RunContext, RunInput

DEFINITION = {"name": "p", "steps": [{"id": "a", "type": "noop"}]}


def run_input() -> RunInput:
    context = RunContext.manual("p", "t/p/key:1", datetime(2026, 1, 31, tzinfo=UTC))
    return RunInput(
        pipeline=validate_pipeline(DEFINITION, source_dir=Path(".")),
        context=context,
        source_dir=".",
    )


def test_payloads_are_the_sdk_pydantic_converters() -> None:
    value = run_input()
    ours = client.data_converter.payload_converter.to_payloads([value])
    sdk = pydantic_data_converter.payload_converter.to_payloads([value])
    assert ours == sdk
    (back,) = client.data_converter.payload_converter.from_payloads(sdk, [RunInput])
    assert back == value
    (raw,) = client.data_converter.payload_converter.from_payloads(sdk)  # no hint: plain JSON
    assert raw["context"]["run_id"] == "t/p/key:1"


def test_new_converters_share_one_cache_of_type_adapters() -> None:
    payloads = pydantic_data_converter.payload_converter.to_payloads([run_input()])
    first = client.LaminarPayloadConverter()  # what a worker makes for a workflow run
    first.from_payloads(payloads, [RunInput])
    built = client._type_adapter.cache_info().misses
    for _ in range(3):  # the next runs' converters: no adapter built again
        (value,) = client.LaminarPayloadConverter().from_payloads(payloads, [RunInput])
        assert isinstance(value, RunInput)
    assert client._type_adapter.cache_info().misses == built
