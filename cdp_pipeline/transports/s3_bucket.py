"""A bucket prefix as a folder tree: how the transport's paths become S3 keys and back, and how a
failure on one of them is told.

S3 has no folders: a "directory" is a key prefix, ``location.prefix`` is the root, and every path
the transport hands out is relative to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdp_pipeline.config.connection import S3Location
from cdp_pipeline.errors import TransportError
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.s3_client import describe_endpoint
from cdp_pipeline.transports.s3_errors import classify_s3_error, error_code, http_status

__all__ = ["BucketPrefix", "clean_path", "entity_tag"]


def clean_path(path: str) -> str:
    """``path`` as a slash-joined relative key: no leading/trailing/double slashes, no "." parts.

    S3 keys could contain "//" or "..", but here they address a folder tree, and a ".." must not
    reach outside the configured prefix.
    """
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise TransportError(f"S3 path {path!r}: '..' is not allowed; paths are relative to the connection's prefix")
    return "/".join(parts)


def entity_tag(etag: str) -> str:
    """An ETag as HTTP conditional headers want it: quoted (RFC 7232). RemoteFile keeps it unquoted;
    some S3 implementations (moto's HeadObject among them) refuse an unquoted If-Match."""
    return '"' + etag.strip('"') + '"'


class BucketPrefix:
    """The boto3 client, the bucket and the prefix one S3 connection works under."""

    def __init__(self, client: Any, location: S3Location) -> None:
        self.client = client
        self.bucket = location.bucket
        self.prefix = clean_path(location.prefix)
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        names = [n for n in (location.access_key_id_env, location.secret_access_key_env) if n]
        #: Where the credentials came from, for messages: variable names, never their values.
        self.credentials = (
            "the key in environment variables " + " / ".join(names)
            if names
            else "the default AWS credential chain (environment, profile or role)"
        )
        self.endpoint = describe_endpoint(location.endpoint_url)
        #: keys the listings left out because no path addresses them exactly, key → problem line.
        self.refused: dict[str, str] = {}

    def key(self, path: str) -> str:
        relative = clean_path(path)
        return "/".join(part for part in (self.prefix, relative) if part)

    def relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def verbatim_key(self, relative: str) -> str:
        """The key of a listing position exactly as it was listed (a continuation), never cleaned."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def exact_relative(self, key: str) -> str | None:
        """The path of a listed ``key`` when ``key(path)`` gives back exactly that key, else None.

        Paths are cleaned on the way in (a configured directory may be "./in" or "/in/"), so a key
        with an empty, "." or ".." segment ("in/.", "in//a.csv", "in/../a.csv") would be downloaded,
        renamed or deleted as another object ("in/." as "in"). Such keys are left out of listings.
        """
        relative = self.relative(key)
        try:
            exact = clean_path(relative) == relative and self.key(relative) == key
        except TransportError:
            exact = False
        return relative if exact and relative else None

    def refuse(self, key: str) -> None:
        self.refused[key] = (
            f"s3://{self.bucket}/{key}: this key has an empty, '.' or '..' path segment, so no path addresses it "
            "exactly (it would be read, renamed or deleted as another object); it is not imported. Rename the "
            "object without such segments (no '//', no '/./' or '/../', not ending in '/.')"
        )

    def address(self, path: str) -> str:
        relative = clean_path(path)
        return f"{self.uri}/{relative}" if relative else self.uri

    def list_prefix(self, directory: str) -> str:
        key = self.key(directory)
        return f"{key}/" if key else ""

    def error(self, exc: BaseException, operation: str, path: str, permission: str) -> TransportError:
        return classify_s3_error(
            exc,
            bucket=self.bucket,
            operation=operation,
            target=self.address(path),
            permission=permission,
            credentials=self.credentials,
            endpoint=self.endpoint,
        )

    def remote_file(self, entry: Mapping[str, Any]) -> RemoteFile | None:
        """A ListObjectsV2 entry as a RemoteFile (path relative to the prefix, ETag unquoted), or
        None for a key no path addresses exactly (recorded in ``refused``)."""
        path = self.exact_relative(entry["Key"])
        if path is None:
            self.refuse(entry["Key"])
            return None
        return RemoteFile(
            path=path,
            size=int(entry["Size"]),
            mtime=entry["LastModified"].timestamp(),
            etag=str(entry.get("ETag", "")).strip('"') or None,
        )

    def head(self, path: str, operation: str, permission: str) -> dict[str, Any] | None:
        """head_object, or None when the key does not exist.

        A HEAD response has no body, so a missing bucket also reads as a plain 404 here; listings,
        which every import starts with, report NoSuchBucket properly.
        """
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(path))
        except ClientError as exc:
            if http_status(exc) == 404 and error_code(exc) != "NoSuchBucket":
                return None
            raise self.error(exc, operation, path, permission) from exc
        except BotoCoreError as exc:
            raise self.error(exc, operation, path, permission) from exc
