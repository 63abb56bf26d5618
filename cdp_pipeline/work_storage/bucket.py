"""The objects of the deliveries' work folders on S3: written with server-side encryption every
time, read into private (0600) files, deleted by prefix.

One rule holds for every write here: the ``ServerSideEncryption`` header goes with it, also with a
copy (S3 does not carry a source object's encryption over to its copy unless asked).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cdp_pipeline.config.work_storage import WorkStorageS3
from cdp_pipeline.errors import CdpError, TransientError

#: object metadata naming the object a server-side copy was made from (a plain file passed
#: through decryption unchanged), so a step pulling both makes one download and a hard link.
COPY_OF = "cdp-copy-of"
_CHUNK = 8 * 1024 * 1024
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500"}


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime


def _client(settings: WorkStorageS3, environ: Mapping[str, str]) -> Any:
    keys = []
    for field in ("access_key_id_env", "secret_access_key_env"):
        name = getattr(settings, field)
        if name is not None and not environ.get(name):
            raise CdpError(f"work_storage.s3 ({settings.bucket}): environment variable {name} ({field}) is not set")
        keys.append(environ.get(name) if name else None)
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
        s3={"addressing_style": "path" if settings.path_style else "virtual"},
    )
    # A session of our own: boto3's default session is shared module state and not thread-safe.
    session = boto3.session.Session(aws_access_key_id=keys[0], aws_secret_access_key=keys[1], region_name=settings.region)
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def _failure(error: Exception, what: str) -> CdpError:
    """A throttled or unavailable server is worth a retry; a refused request (no permission, no
    bucket) is not, and its message says what to fix."""
    code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
    if isinstance(error, BotoCoreError) or code in _TRANSIENT_CODES:
        return TransientError(f"work storage: {what}: {error}")
    return CdpError(f"work storage: {what}: {error} (check the bucket, the prefix and the credentials' permissions)")


class WorkBucket:
    """The bucket of ``work_storage.s3``; keys given here are relative to its prefix."""

    def __init__(self, settings: WorkStorageS3, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._client = _client(settings, os.environ if environ is None else environ)

    def key(self, relative: str) -> str:
        return f"{self.settings.prefix}/{relative}" if self.settings.prefix else relative

    def uri(self, relative: str) -> str:
        return f"s3://{self.settings.bucket}/{self.key(relative)}"

    def _encryption(self) -> dict[str, str]:
        args: dict[str, str] = {"ServerSideEncryption": self.settings.server_side_encryption}
        if self.settings.kms_key_id:
            args["SSEKMSKeyId"] = self.settings.kms_key_id
        return args

    def put_file(self, local: Path, relative: str) -> None:
        try:
            self._client.upload_file(str(local), self.settings.bucket, self.key(relative), ExtraArgs=self._encryption())
        except (ClientError, BotoCoreError) as error:
            raise _failure(error, f"writing {self.uri(relative)}") from None
        except Exception as error:  # boto3's transfer manager wraps failures of its threads
            cause = error.__cause__ if isinstance(error.__cause__, (ClientError, BotoCoreError)) else error
            raise _failure(cause, f"writing {self.uri(relative)}") from None

    def copy(self, source_relative: str, relative: str) -> None:
        """A server-side copy (nothing travels through this host), marked with where it came from."""
        try:
            self._client.copy_object(
                Bucket=self.settings.bucket, Key=self.key(relative),
                CopySource={"Bucket": self.settings.bucket, "Key": self.key(source_relative)},
                MetadataDirective="REPLACE", Metadata={COPY_OF: source_relative}, **self._encryption(),
                # A checksum of the copy's own: a multipart source's per-part checksum would not
                # match the whole object a later download verifies.
                ChecksumAlgorithm="CRC32",
            )
        except (ClientError, BotoCoreError) as error:
            raise _failure(error, f"copying to {self.uri(relative)}") from None

    def get_file(self, relative: str, local: Path, linked: Mapping[str, Path]) -> None:
        """Write the object into a new 0600 file; an object copied from one already in ``linked``
        (relative key → local file) becomes a hard link to that file instead of a second download."""
        try:
            response = self._client.get_object(Bucket=self.settings.bucket, Key=self.key(relative))
        except (ClientError, BotoCoreError) as error:
            raise _failure(error, f"reading {self.uri(relative)}") from None
        body = response["Body"]
        try:
            source = linked.get(response.get("Metadata", {}).get(COPY_OF, ""))
            if source is not None:
                os.link(source, local)
                return
            descriptor = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                shutil.copyfileobj(body, handle, _CHUNK)
        except (ClientError, BotoCoreError) as error:
            raise _failure(error, f"reading {self.uri(relative)}") from None
        finally:
            body.close()

    def encryption_of(self, relative: str) -> str | None:
        """The server-side encryption S3 reports for a stored object (None: stored unencrypted)."""
        try:
            head = self._client.head_object(Bucket=self.settings.bucket, Key=self.key(relative))
        except (ClientError, BotoCoreError) as error:
            raise _failure(error, f"reading {self.uri(relative)}") from None
        return head.get("ServerSideEncryption")

    def objects(self, relative_prefix: str) -> Iterator[StoredObject]:
        """Objects below ``relative_prefix`` (a folder: ends with ``/``), keys relative to the prefix."""
        strip = len(self.key(""))
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=self.key(relative_prefix))
            for page in pages:
                for entry in page.get("Contents", ()):
                    yield StoredObject(key=entry["Key"][strip:], size=entry["Size"], last_modified=entry["LastModified"])
        except (ClientError, BotoCoreError) as error:
            raise _failure(error, f"listing {self.uri(relative_prefix)}") from None

    def delete(self, relatives: list[str]) -> None:
        for start in range(0, len(relatives), 1000):  # S3's limit per request
            batch = relatives[start : start + 1000]
            try:
                response = self._client.delete_objects(
                    Bucket=self.settings.bucket, Delete={"Objects": [{"Key": self.key(k)} for k in batch], "Quiet": True}
                )
            except (ClientError, BotoCoreError) as error:
                raise _failure(error, f"deleting below {self.uri('')}") from None
            if errors := response.get("Errors"):
                first = errors[0]
                raise CdpError(f"work storage: could not delete {len(errors)} object(s), first {first.get('Key')}: {first.get('Message')}")

    def delete_below(self, relative_prefix: str) -> int:
        keys = [item.key for item in self.objects(relative_prefix)]
        self.delete(keys)
        return len(keys)
