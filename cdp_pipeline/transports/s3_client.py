"""A boto3 S3 client outside Dagster (CLI, benchmarks), and the credentials it is built from.

Under Dagster the client comes from ``dagster_aws.s3.S3Resource(...).get_client()`` instead; both
use botocore's standard retry mode, so the two code paths behave alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from cdp_pipeline.config.connection import S3Location
from cdp_pipeline.errors import TransportError

__all__ = ["credentials_from_environment", "describe_endpoint", "s3_client_for"]


def s3_client_for(
    location: S3Location,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
) -> Any:
    """A boto3 S3 client for ``location`` outside Dagster (CLI, benchmarks).

    With no key, boto3's default chain applies (environment, profile, instance or task role).
    Retries use botocore's *standard* mode (exponential backoff with jitter on throttling, 5xx and
    connection errors), as dagster-aws' S3Resource does, so both code paths behave alike.
    """
    if bool(access_key_id) != bool(secret_access_key):
        raise TransportError(
            f"S3 bucket {location.bucket!r}: an access key id needs its secret access key and vice versa "
            f"(check {location.access_key_id_env or 'access_key_id_env'} and "
            f"{location.secret_access_key_env or 'secret_access_key_env'})"
        )
    s3_options: dict[str, str] = {}
    if location.endpoint_url:
        # S3-compatible stores (MinIO, Ceph, moto) rarely have wildcard DNS for bucket.host names;
        # path-style requests work everywhere such a store is reachable.
        s3_options["addressing_style"] = "path"
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
        s3=s3_options or None,
    )
    # A session of our own: boto3's default session is shared module state and not thread-safe.
    session = boto3.session.Session(
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        aws_session_token=session_token or None,
        region_name=location.region,
    )
    return session.client("s3", endpoint_url=location.endpoint_url, config=config)


def credentials_from_environment(location: S3Location, environ: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    values: list[str | None] = []
    for field in ("access_key_id_env", "secret_access_key_env", "session_token_env"):
        name = getattr(location, field)
        if name is None:
            values.append(None)
            continue
        value = environ.get(name)
        if not value:
            raise TransportError(f"S3 bucket {location.bucket!r}: environment variable {name} ({field}) is not set")
        values.append(value)
    return values[0], values[1], values[2]


def describe_endpoint(endpoint_url: str | None) -> str:
    """The endpoint for messages: scheme, host and port only (a URL may carry user:password@)."""
    if not endpoint_url:
        return "AWS S3"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or endpoint_url
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
