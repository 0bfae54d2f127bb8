"""The stand-in for S3 in tests: moto's S3 in server mode (a real HTTP server on a loopback
port speaking the S3 protocol). No cloud object store can be reached from these machines;
this is what the tests use instead, and it is named as such wherever it appears."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

CREDENTIALS = {
    # Dummy keys: moto accepts any; they reach laminar only through the standard AWS chain.
    "AWS_ACCESS_KEY_ID": "laminar-test",
    "AWS_SECRET_ACCESS_KEY": "laminar-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3StandIn:
    endpoint: str

    def env(self) -> dict[str, str]:
        """What a container on Fargate / a Kubernetes Job would have: the endpoint and keys."""
        return {**CREDENTIALS, "LAMINAR_S3_ENDPOINT": self.endpoint}

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        name = f"laminar-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@contextlib.contextmanager
def s3_standin() -> Iterator[S3StandIn]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield S3StandIn(f"http://{host}:{port}")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
