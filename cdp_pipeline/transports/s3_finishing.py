"""What happens to a delivered object after its import: moved (copy + delete) or deleted.

S3 has no rename: a move is a copy followed by a delete, and both are pinned to the ETag seen at
listing time, so a new delivery written under the same name meanwhile is never moved or deleted
unprocessed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from cdp_pipeline.errors import FileVanishedError, TransportError
from cdp_pipeline.transports.s3_bucket import BucketPrefix, entity_tag
from cdp_pipeline.transports.s3_errors import error_code, http_status

__all__ = ["RENAME_MARKER", "SINGLE_COPY_LIMIT_BYTES", "delete", "rename"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: One CopyObject request handles up to 5 GiB server side; only larger objects need a multipart copy.
SINGLE_COPY_LIMIT_BYTES = 5 * 1024 * MiB

_COPY_CONFIG = TransferConfig(
    multipart_threshold=SINGLE_COPY_LIMIT_BYTES,
    multipart_chunksize=512 * MiB,
    max_concurrency=4,
)

#: User metadata written on the target of a rename: the ETag of the source it was copied from. A rename
#: interrupted between copy and delete leaves both objects; this marker lets the retry recognise its own
#: copy (and finish by deleting the source) without ever replacing an unrelated object of the same name.
#: The ETag alone cannot do that: a single-request copy of a multipart object gets a different ETag.
RENAME_MARKER = "cdp-moved-from-etag"


def rename(root: BucketPrefix, remote_path: str, new_path: str, *, if_match: str | None = None) -> None:
    """Copy to ``new_path``, then delete ``remote_path`` (S3 has no rename).

    Needs s3:GetObject + s3:PutObject (the copy) and s3:DeleteObject (the delete). Idempotent: when the
    source is gone and the target exists, it returns; when a previous call copied but did not delete,
    this one recognises its copy (RENAME_MARKER) and deletes the source. An unrelated existing target is
    never replaced. ``if_match`` (the ETag seen at listing) refuses to move an object that was
    overwritten since, so a new delivery under the same name is not renamed away unprocessed.
    """
    permission = "s3:GetObject, s3:PutObject and s3:DeleteObject"
    source = root.head(remote_path, "rename", permission)
    if source is None:
        if root.head(new_path, "rename", permission) is not None:
            return  # an earlier call finished the move
        raise FileVanishedError(
            f"S3 rename of {root.address(remote_path)}: it does not exist, and neither does {root.address(new_path)}"
        )
    source_etag = str(source.get("ETag", "")).strip('"')
    if if_match and source_etag != if_match.strip('"'):
        raise FileVanishedError(
            f"S3 rename of {root.address(remote_path)}: the object changed since it was listed; it was left "
            "in place and will be picked up as a new version on the next tick"
        )

    target = root.head(new_path, "rename", permission)
    if target is not None:
        resumed = target.get("Metadata", {}).get(RENAME_MARKER) == source_etag and int(
            target.get("ContentLength", -1)
        ) == int(source.get("ContentLength", -2))
        if not resumed:
            raise TransportError(
                f"S3 rename of {root.address(remote_path)}: {root.address(new_path)} already exists; "
                "a rename never replaces a file"
            )
    else:
        _copy(root, remote_path, new_path, source, source_etag, permission)
    _delete_source(root, remote_path, source_etag, permission)


def _copy(root: BucketPrefix, remote_path: str, new_path: str, source: Mapping[str, Any], etag: str, permission: str) -> None:
    # REPLACE is needed to add the marker; it then drops whatever is not restated, so the content
    # headers and storage class of the source are carried over explicitly.
    extra: dict[str, Any] = {
        "CopySourceIfMatch": entity_tag(etag),  # copy exactly the version we looked at
        "MetadataDirective": "REPLACE",
        "Metadata": {**source.get("Metadata", {}), RENAME_MARKER: etag},
    }
    for header in ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl"):
        if source.get(header):
            extra[header] = source[header]
    if source.get("StorageClass"):
        extra["StorageClass"] = source["StorageClass"]
    try:
        root.client.copy(
            {"Bucket": root.bucket, "Key": root.key(remote_path)},
            root.bucket,
            root.key(new_path),
            ExtraArgs=extra,
            Config=_COPY_CONFIG,
        )
    except (ClientError, BotoCoreError) as exc:
        raise root.error(exc, "rename (copy)", remote_path, permission) from exc


def _delete_source(root: BucketPrefix, remote_path: str, etag: str, permission: str) -> None:
    request = {"Bucket": root.bucket, "Key": root.key(remote_path), "IfMatch": entity_tag(etag)}
    try:
        try:
            root.client.delete_object(**request)
        except ClientError as exc:
            if error_code(exc) != "NotImplemented":
                raise
            # Some S3-compatible stores do not support conditional deletes; the copy was pinned to
            # this ETag already, so an unconditional delete only risks the instants since the copy.
            del request["IfMatch"]
            root.client.delete_object(**request)
    except (ClientError, BotoCoreError) as exc:
        error = root.error(exc, "rename (delete)", remote_path, "s3:DeleteObject")
        if isinstance(error, FileVanishedError):
            if isinstance(exc, ClientError) and http_status(exc) == 412:
                # Overwritten between copy and delete: the version we imported is at the target, the
                # new one is a new delivery and must stay.
                log.warning(
                    "S3 rename of %s: a new version appeared during the move; it was left in place",
                    root.address(remote_path),
                )
            return  # already gone: the move is complete
        raise error from exc


def delete(root: BucketPrefix, remote_path: str, *, if_match: str | None = None) -> None:
    """Remove a key; a missing key is not an error. ``if_match`` refuses to delete a changed object."""
    request: dict[str, Any] = {"Bucket": root.bucket, "Key": root.key(remote_path)}
    if if_match:
        request["IfMatch"] = entity_tag(if_match)
    try:
        root.client.delete_object(**request)
    except (ClientError, BotoCoreError) as exc:
        error = root.error(exc, "delete", remote_path, "s3:DeleteObject")
        if isinstance(error, FileVanishedError):
            if isinstance(exc, ClientError) and http_status(exc) == 412:
                raise FileVanishedError(
                    f"S3 delete of {root.address(remote_path)}: the object changed since it was listed; "
                    "it was not deleted"
                ) from exc
            return
        raise error from exc
