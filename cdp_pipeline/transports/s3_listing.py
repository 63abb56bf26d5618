"""Listing a bucket prefix: the whole folder at once, or one bounded slice of it per call.

Listing large prefixes costs one request per 1,000 keys, so a sensor that looks every few
seconds walks a large prefix in slices (``StartAfter``) instead of listing all of it every time.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.s3_bucket import BucketPrefix

__all__ = ["LIST_PAGE_MAX", "list_files", "list_files_after"]

#: ListObjectsV2 never returns more than this per request.
LIST_PAGE_MAX = 1000


def _files(root: BucketPrefix, page: dict[str, Any]) -> list[RemoteFile]:
    """A page's objects ("folder" placeholders ending in "/" left out), each addressable exactly."""
    listed = (root.remote_file(entry) for entry in page.get("Contents", ()) if not entry["Key"].endswith("/"))
    return [remote for remote in listed if remote is not None]


def list_files(root: BucketPrefix, directory: str) -> list[RemoteFile]:
    """Objects directly under ``directory`` (Delimiter="/": deeper keys are not returned).

    A prefix with no objects is simply empty: S3 has no folders that could be missing.
    """
    prefix = root.list_prefix(directory)
    files: list[RemoteFile] = []
    try:
        pages = root.client.get_paginator("list_objects_v2").paginate(
            Bucket=root.bucket, Prefix=prefix, Delimiter="/", PaginationConfig={"PageSize": LIST_PAGE_MAX}
        )
        for page in pages:
            files.extend(_files(root, page))
    except (ClientError, BotoCoreError) as exc:
        raise root.error(exc, "listing", directory, "s3:ListBucket") from exc
    return files


def list_files_after(root: BucketPrefix, directory: str, after: str | None, max_keys: int) -> tuple[list[RemoteFile], str | None]:
    """One bounded slice of ``list_files(directory)``: entries after ``after``, at most ``max_keys``.

    ``after`` is a path as returned before (``RemoteFile.path`` or the returned continuation).
    Returns the files and the continuation point to pass next time, or None when the listing reached
    the end of the prefix; callers then start again from None, since new keys may sort before the
    old continuation point. S3 counts sub-prefixes ("folders") towards ``max_keys`` too, so a slice
    may hold fewer files than ``max_keys`` and still continue.

    Unlike dagster-aws' ``get_objects(since_key=...)`` this neither lists the whole prefix on every
    call nor fails when the continuation key has since been deleted: ``StartAfter`` is a position
    in key order, not a key that must exist.
    """
    if max_keys < 1:
        raise ValueError("max_keys must be at least 1")
    prefix = root.list_prefix(directory)
    if after:
        # A continuation that is a sub-prefix ("sub/") keeps its slash: StartAfter "dir/sub/" skips the
        # whole rolled-up prefix, "dir/sub" would return it again.
        # The continuation is a position, used verbatim: cleaning it could move it backwards.
        cursor = root.verbatim_key(after)
    else:
        cursor = ""
    files: list[RemoteFile] = []
    remaining = max_keys
    try:
        while remaining > 0:
            request: dict[str, Any] = {
                "Bucket": root.bucket,
                "Prefix": prefix,
                "Delimiter": "/",
                "MaxKeys": min(remaining, LIST_PAGE_MAX),
            }
            if cursor:
                request["StartAfter"] = cursor
            page = root.client.list_objects_v2(**request)
            keys = [entry["Key"] for entry in page.get("Contents", ())]
            sub_prefixes = [entry["Prefix"] for entry in page.get("CommonPrefixes", ())]
            files.extend(_files(root, page))
            if not page.get("IsTruncated"):
                return files, None
            seen = keys + sub_prefixes
            if not seen:  # truncated but empty: never loop on a page that does not advance
                break
            cursor = max(seen)
            remaining -= len(seen)
    except (ClientError, BotoCoreError) as exc:
        raise root.error(exc, "listing", directory, "s3:ListBucket") from exc
    return files, (root.relative(cursor) if cursor else None)
