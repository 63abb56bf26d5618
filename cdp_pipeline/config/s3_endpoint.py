"""The settings every bucket of the store's own needs (the lake's data files, the deliveries' work
folders): where the server is, how it is addressed, which variables hold the keys.

Both buckets hold customer data, so the same rules apply to both: a server is reached over TLS
unless it runs on this very host, and the keys come from environment variables, both or neither.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from cdp_pipeline.config.connection import _env_name, endpoint_parts
from cdp_pipeline.config.csv_options import StrictModel


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class S3Endpoint(StrictModel):
    """A bucket on AWS S3 or on an S3-compatible server, and the credentials to reach it."""

    bucket: str = Field(min_length=1)
    region: str = "us-east-1"
    #: ``https://host:port`` of an S3-compatible server (MinIO, Ceph); none for AWS itself.
    endpoint_url: str | None = None
    #: path-style URLs (``host/bucket/key``), as most S3-compatible servers want.
    path_style: bool = True
    #: environment variables holding the keys; none: the default credential chain (pod role, ``AWS_*``).
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None

    _names = field_validator("access_key_id_env", "secret_access_key_env")(_env_name)

    @field_validator("endpoint_url")
    @classmethod
    def _encrypted_in_transit(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = endpoint_parts(value)
        # Customer data travels to this server: only a server on this very host may be reached
        # without TLS (a test server, or a proxy on the same host that adds TLS itself).
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            raise ValueError(
                f"{parts.scheme}://{parts.hostname}: customer data would cross the network unencrypted; "
                "use an https:// endpoint (http is accepted only for a server on 127.0.0.1 / localhost)"
            )
        return value

    @model_validator(mode="after")
    def _both_keys_or_neither(self) -> S3Endpoint:
        if bool(self.access_key_id_env) != bool(self.secret_access_key_env):
            raise ValueError("give both access_key_id_env and secret_access_key_env, or neither (the default credential chain)")
        return self
