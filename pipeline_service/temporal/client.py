"""Temporal client factory: every client speaks pydantic (one model in, one model out)."""

from __future__ import annotations

import functools
from typing import Any

import temporalio.api.common.v1
from pydantic import TypeAdapter
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)

TASK_QUEUE = "laminar-pipelines"

_type_adapter = functools.lru_cache(maxsize=1024)(TypeAdapter)
"""One cache of pydantic type adapters for the process."""


class _SharedAdaptersJSON(PydanticJSONPlainPayloadConverter):
    """The SDK's pydantic JSON converter, with the process's cache of type adapters: the SDK
    keeps one cache per converter, and a worker makes a new payload converter for every
    workflow run, so each run built its input's adapter again (0.7 ms of CPU per run for
    RunInput)."""

    def from_payload(
        self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None
    ) -> Any:
        try:
            adapter = _type_adapter(Any if type_hint is None else type_hint)
        except TypeError:  # an unhashable hint: the SDK's own path
            return super().from_payload(payload, type_hint)
        return adapter.validate_json(payload.data)


class LaminarPayloadConverter(CompositePayloadConverter):
    """The SDK's PydanticPayloadConverter (same encodings, same payloads), sharing its type
    adapters across workflow runs."""

    def __init__(self) -> None:
        json_plain = _SharedAdaptersJSON()
        super().__init__(
            *(
                json_plain if isinstance(converter, JSONPlainPayloadConverter) else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


data_converter = DataConverter(payload_converter_class=LaminarPayloadConverter)
"""Laminar's data converter: pydantic models as JSON, as `pydantic_data_converter` writes
them (histories written with either replay with the other)."""


async def connect(address: str, namespace: str = "default") -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=data_converter)
