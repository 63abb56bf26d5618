"""The ``work_storage`` settings of ``store.yaml``: where a delivery's intermediate files (downloads,
plaintext, staged tables, manifests, reject report) live between the steps of an import.

``local`` keeps them in ``CDP_HOME/work`` on this host. ``s3`` keeps them under a prefix of a bucket,
so a step running in another process, pod or host continues the work of the one before it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from cdp_pipeline.config.csv_options import StrictModel
from cdp_pipeline.config.s3_endpoint import S3Endpoint


class WorkStorageS3(S3Endpoint):
    """The bucket and prefix holding the deliveries' work folders, and how their objects are encrypted."""

    #: folder inside the bucket; a delivery's files go below ``<prefix>/<connection>/<work folder>/``.
    prefix: str = "cdp-work"
    #: sent with every object written: the plaintext of customer files is never at rest unencrypted.
    server_side_encryption: Literal["AES256", "aws:kms"]
    #: the KMS key of ``aws:kms``; none: the bucket's (or the account's) default KMS key.
    kms_key_id: str | None = None

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        return value.strip("/")

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> WorkStorageS3:
        if self.kms_key_id is not None and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id is used with server_side_encryption: aws:kms only; set that, or remove kms_key_id")
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
