"""The ``work_storage`` settings of ``store.yaml``: where a delivery's intermediate files (downloads,
plaintext, staged tables, manifests, reject report) live between the steps of an import.

``local`` keeps them in ``CDP_HOME/work`` on this host. ``s3`` keeps them under a prefix of a bucket,
so a step running in another process, pod or host continues the work of the one before it.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from cdp_pipeline.config.connection import _env_name
from cdp_pipeline.config.csv_options import StrictModel


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WorkStorageS3(StrictModel):
    """The bucket and prefix holding the deliveries' work folders, and how their objects are encrypted."""

    bucket: str = Field(min_length=1)
    #: folder inside the bucket; a delivery's files go below ``<prefix>/<connection>/<work folder>/``.
    prefix: str = "cdp-work"
    region: str = "us-east-1"
    #: ``https://host:port`` of an S3-compatible server (MinIO, Ceph); none for AWS itself.
    endpoint_url: str | None = None
    #: path-style URLs (``host/bucket/key``), as most S3-compatible servers want.
    path_style: bool = True
    #: environment variables holding the keys; none: boto3's default chain (pod role, ``AWS_*``).
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    #: sent with every object written: the plaintext of customer files is never at rest unencrypted.
    server_side_encryption: Literal["AES256", "aws:kms"]
    #: the KMS key of ``aws:kms``; none: the bucket's (or the account's) default KMS key.
    kms_key_id: str | None = None

    _names = field_validator("access_key_id_env", "secret_access_key_env")(_env_name)

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("endpoint_url")
    @classmethod
    def _encrypted_in_transit(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s)://host[:port] URL")
        # Plaintext customer files travel to this server: only a server on this very host may be
        # reached without TLS (a test server, or a proxy that adds TLS itself).
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError(
                f"{parts.scheme}://{parts.hostname}: the delivery's plaintext would cross the network unencrypted; "
                "use an https:// endpoint (http is accepted only for a server on 127.0.0.1 / localhost)"
            )
        return value

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> WorkStorageS3:
        if self.kms_key_id is not None and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id is used with server_side_encryption: aws:kms only; set that, or remove kms_key_id")
        if bool(self.access_key_id_env) != bool(self.secret_access_key_env):
            raise ValueError("give both access_key_id_env and secret_access_key_env, or neither (the default credential chain)")
        return self


class WorkStorageSettings(StrictModel):
    #: ``local``: ``CDP_HOME/work`` on this host. ``s3``: the bucket of ``s3``.
    type: Literal["local", "s3"] = "local"
    s3: WorkStorageS3 | None = None

    @model_validator(mode="after")
    def _s3_settings_given(self) -> WorkStorageSettings:
        if self.type == "s3" and self.s3 is None:
            raise ValueError("type s3 needs the s3 settings (bucket, server_side_encryption ...)")
        if self.type == "local" and self.s3 is not None:
            raise ValueError("s3 settings are given but type is local; set type: s3 or remove them")
        return self
