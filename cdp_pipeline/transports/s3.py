"""S3 (and S3-compatible stores) as a transport: key prefixes under ``location.prefix`` are folders.

The boto3 client is passed in: under Dagster it comes from ``dagster_aws.s3.S3Resource(...).get_client()``,
elsewhere (CLI, benchmarks) from :func:`s3_client_for`. This module never imports dagster.

What S3 changes compared to a file server:

* An object appears only once its PUT or multipart upload has completed, so there are no half-written
  objects to guard against, but a key can be **overwritten** between our listing and our read. Every
  read is therefore pinned to the ETag seen at listing time (``GetObject IfMatch``); a changed object
  fails with ``FileVanishedError`` and is picked up again, as a new identity, on the next tick.
* There are no folders and no rename: "directories" are key prefixes and a rename is copy + delete.
* Listing large prefixes costs one request per 1,000 keys, so sensors use :meth:`S3Transport.list_files_after`
  (``StartAfter``) to look at a bounded slice per tick instead of the whole prefix every time.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from cdp_pipeline.config.connection import S3Location
from cdp_pipeline.errors import FileVanishedError, TransientTransportError, TransportError
from cdp_pipeline.transports.base import RemoteFile, Transport

__all__ = ["S3Transport", "classify_s3_error", "s3_client_for"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Downloads are streamed in pieces of this size: large enough that Python overhead is negligible
#: (streamed get_object reached ~555 MB/s against a local server), small enough to keep memory flat.
DOWNLOAD_CHUNK_BYTES = 8 * MiB
#: boto3's default 8 MB parts were ~5x slower than 64 MB parts against a local S3 server
#: (speed-anchors.md); 64 MB parts also keep a 50 GB file under S3's 10,000-part limit.
UPLOAD_PART_BYTES = 64 * MiB
#: One CopyObject request handles up to 5 GiB server side; only larger objects need a multipart copy.
SINGLE_COPY_LIMIT_BYTES = 5 * 1024 * MiB
#: ListObjectsV2 never returns more than this per request.
LIST_PAGE_MAX = 1000

_UPLOAD_CONFIG = TransferConfig(
    multipart_threshold=UPLOAD_PART_BYTES,
    multipart_chunksize=UPLOAD_PART_BYTES,
    max_concurrency=4,  # I/O bound; more threads only add memory (4 x 64 MB buffers at most)
)
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

# ------------------------------------------------------------------ error classification

#: Error codes that mean "the service is busy or briefly broken": retrying later may succeed.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",  # a conflicting operation on the bucket is in progress
    }
)
_ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_BAD_KEY_CODES = frozenset({"InvalidAccessKeyId", "InvalidClientTokenId", "InvalidToken"})
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
_WRONG_REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})


def _client_error_of(exc: BaseException) -> ClientError | None:
    """The ClientError behind ``exc``: boto3's upload_file wraps it in S3UploadFailedError (as context)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ClientError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


def _http_status(error: ClientError) -> int:
    try:
        return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    except (TypeError, ValueError):
        return 0


def _entity_tag(etag: str) -> str:
    """An ETag as HTTP conditional headers want it: quoted (RFC 7232). RemoteFile keeps it unquoted;
    some S3 implementations (moto's HeadObject among them) refuse an unquoted If-Match."""
    return '"' + etag.strip('"') + '"'


def _safe_endpoint(endpoint_url: str | None) -> str:
    """The endpoint for messages: scheme, host and port only (a URL may carry user:password@)."""
    if not endpoint_url:
        return "AWS S3"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or endpoint_url
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def classify_s3_error(
    exc: BaseException,
    *,
    bucket: str,
    operation: str,
    target: str,
    permission: str,
    credentials: str = "the default AWS credential chain",
    endpoint: str = "AWS S3",
) -> TransportError:
    """Turn a boto3/botocore failure into the pipeline's error types; pure logic, no I/O.

    ``operation`` is ours ("download"), ``target`` what it acted on (an ``s3://`` address),
    ``permission`` the IAM action it needs, ``credentials`` where the key came from (names of
    environment variables, never their values). Only the server's error code and message are
    quoted: they never contain the secret key.

    Throttling, 5xx and connection trouble → TransientTransportError (Dagster retries with backoff);
    a changed or missing object → FileVanishedError; credentials, permissions, a missing bucket or a
    wrong region → TransportError that says what to fix (retrying cannot help).
    """
    client_error = _client_error_of(exc)
    if client_error is None:
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return TransportError(
                f"S3 {operation} of {target}: no usable credentials ({type(exc).__name__}); "
                f"set {credentials} (the access key id and secret access key must both be set)"
            )
        if isinstance(exc, FlexibleChecksumError):
            return TransientTransportError(
                f"S3 {operation} of {target}: the data did not match its checksum in transit; it will be retried"
            )
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError)):
            # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError ...
            return TransientTransportError(
                f"S3 {operation} of {target}: cannot reach {endpoint} ({type(exc).__name__}); it will be retried"
            )
        if isinstance(exc, BotoCoreError):
            return TransportError(f"S3 {operation} of {target} failed: {type(exc).__name__}: {exc}")
        return TransportError(f"S3 {operation} of {target} failed: {type(exc).__name__}: {exc}")

    code = _error_code(client_error)
    status = _http_status(client_error)
    api = client_error.operation_name or operation
    server_message = str(client_error.response.get("Error", {}).get("Message") or "").strip()
    said = f" Server said: {server_message}" if server_message else ""
    where = f"S3 {operation} of {target} ({api})"

    if code in _CHANGED_CODES or status == 412:
        return FileVanishedError(
            f"{where}: the object changed since it was listed (its ETag no longer matches); it was left alone "
            "and will be picked up as a new version on the next tick"
        )
    if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
        return FileVanishedError(f"{where}: the object no longer exists (deleted or moved since it was listed)")
    if code in _TRANSIENT_CODES or status in (429, 500, 502, 503, 504) or (status >= 500 and code != "NotImplemented"):
        return TransientTransportError(f"{where}: {code or status} from {endpoint}; it will be retried.{said}")
    if code == "NoSuchBucket":
        return TransportError(
            f"{where}: bucket {bucket!r} does not exist at {endpoint} (NoSuchBucket); check `bucket`, "
            "`region` and `endpoint_url` of the connection"
        )
    if code == "InvalidObjectState":
        return TransportError(
            f"{where}: the object is archived (Glacier / Deep Archive storage class) and must be restored "
            "before it can be read, or delivered with a readable storage class"
        )
    credential_codes = _BAD_KEY_CODES | _EXPIRED_CODES | {"SignatureDoesNotMatch", "RequestTimeTooSkewed"}
    if code in _ACCESS_DENIED_CODES or (status == 403 and code not in credential_codes):
        hint = ""
        if api == "HeadObject":
            hint = " (without s3:ListBucket, S3 also answers 403 instead of 404 for a key that does not exist)"
        return TransportError(
            f"{where} was denied ({code or status}): the credentials ({credentials}) need {permission} on bucket "
            f"{bucket!r}{hint}.{said}"
        )
    if code in _BAD_KEY_CODES:
        return TransportError(
            f"{where}: the server does not know the access key id ({code}); check {credentials} "
            "(a key of another account, a deleted key, or a session token that does not belong to it)"
        )
    if code == "SignatureDoesNotMatch":
        return TransportError(
            f"{where}: the request signature does not match (SignatureDoesNotMatch): the secret access key does not "
            f"belong to the access key id; check {credentials}"
        )
    if code in _EXPIRED_CODES:
        return TransportError(
            f"{where}: the temporary credentials have expired ({code}) and were not refreshed; "
            f"issue a new session token ({credentials})"
        )
    if code == "RequestTimeTooSkewed":
        return TransportError(f"{where}: this machine's clock differs too much from the server's; fix the clock (NTP)")
    if code in _WRONG_REGION_CODES or status == 301:
        return TransportError(
            f"{where}: bucket {bucket!r} is in another region or needs another endpoint ({code or status}); "
            f"set `region` (and `endpoint_url` for S3-compatible stores).{said}"
        )
    return TransportError(f"{where} failed: {code or status}.{said}")


# ------------------------------------------------------------------ client construction


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


def _credentials_from_env(location: S3Location, environ: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
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


# ------------------------------------------------------------------ paths


def _clean(path: str) -> str:
    """``path`` as a slash-joined relative key: no leading/trailing/double slashes, no "." parts.

    S3 keys could contain "//" or "..", but here they address a folder tree, and a ".." must not
    reach outside the configured prefix.
    """
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise TransportError(f"S3 path {path!r}: '..' is not allowed; paths are relative to the connection's prefix")
    return "/".join(parts)


# ------------------------------------------------------------------ transport


class S3Transport(Transport):
    """A bucket prefix as a folder tree. ``client`` is a boto3 S3 client; it is closed only if owned."""

    def __init__(self, client: Any, location: S3Location, *, owns_client: bool = False) -> None:
        self._client = client
        self._location = location
        self._bucket = location.bucket
        self._prefix = _clean(location.prefix)
        self._owns_client = owns_client
        self.uri = f"s3://{self._bucket}" + (f"/{self._prefix}" if self._prefix else "")
        names = [n for n in (location.access_key_id_env, location.secret_access_key_env) if n]
        self._credentials = (
            "the key in environment variables " + " / ".join(names)
            if names
            else "the default AWS credential chain (environment, profile or role)"
        )
        self._endpoint = _safe_endpoint(location.endpoint_url)

    @classmethod
    def from_environment(cls, location: S3Location, environ: Mapping[str, str] | None = None) -> S3Transport:
        """A transport with its own client, credentials read from the variables the location names."""
        key_id, secret, token = _credentials_from_env(location, os.environ if environ is None else environ)
        return cls(s3_client_for(location, key_id, secret, token), location, owns_client=True)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # -------------------------------------------------------------- helpers

    def _key(self, path: str) -> str:
        relative = _clean(path)
        return "/".join(part for part in (self._prefix, relative) if part)

    def _relative(self, key: str) -> str:
        return key[len(self._prefix) + 1 :] if self._prefix else key

    def _address(self, path: str) -> str:
        relative = _clean(path)
        return f"{self.uri}/{relative}" if relative else self.uri

    def _error(self, exc: BaseException, operation: str, path: str, permission: str) -> TransportError:
        return classify_s3_error(
            exc,
            bucket=self._bucket,
            operation=operation,
            target=self._address(path),
            permission=permission,
            credentials=self._credentials,
            endpoint=self._endpoint,
        )

    def _list_prefix(self, directory: str) -> str:
        key = self._key(directory)
        return f"{key}/" if key else ""

    def _file(self, entry: Mapping[str, Any]) -> RemoteFile:
        return RemoteFile(
            path=self._relative(entry["Key"]),
            size=int(entry["Size"]),
            mtime=entry["LastModified"].timestamp(),
            etag=str(entry.get("ETag", "")).strip('"') or None,
        )

    def _head(self, path: str, operation: str, permission: str) -> dict[str, Any] | None:
        """head_object, or None when the key does not exist.

        A HEAD response has no body, so a missing bucket also reads as a plain 404 here; listings,
        which every import starts with, report NoSuchBucket properly.
        """
        try:
            return self._client.head_object(Bucket=self._bucket, Key=self._key(path))
        except ClientError as exc:
            if _http_status(exc) == 404 and _error_code(exc) != "NoSuchBucket":
                return None
            raise self._error(exc, operation, path, permission) from exc
        except BotoCoreError as exc:
            raise self._error(exc, operation, path, permission) from exc

    # -------------------------------------------------------------- listing

    def list_files(self, directory: str) -> list[RemoteFile]:
        """Objects directly under ``directory`` (Delimiter="/": deeper keys are not returned).

        A prefix with no objects is simply empty: S3 has no folders that could be missing.
        """
        prefix = self._list_prefix(directory)
        files: list[RemoteFile] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=prefix, Delimiter="/", PaginationConfig={"PageSize": LIST_PAGE_MAX}
            )
            for page in pages:
                files.extend(self._file(entry) for entry in page.get("Contents", ()) if not entry["Key"].endswith("/"))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "listing", directory, "s3:ListBucket") from exc
        return files

    def list_files_after(
        self, directory: str, start_after: str | None, max_keys: int
    ) -> tuple[list[RemoteFile], str | None]:
        """One bounded slice of ``list_files(directory)``: entries after ``start_after``, at most ``max_keys``.

        ``start_after`` is a path as returned before (``RemoteFile.path`` or the returned continuation).
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
        prefix = self._list_prefix(directory)
        if start_after:
            # A continuation that is a sub-prefix ("sub/") keeps its slash: StartAfter "dir/sub/" skips the
            # whole rolled-up prefix, "dir/sub" would return it again.
            cursor = self._key(start_after) + ("/" if start_after.endswith("/") else "")
        else:
            cursor = ""
        files: list[RemoteFile] = []
        remaining = max_keys
        try:
            while remaining > 0:
                request: dict[str, Any] = {
                    "Bucket": self._bucket,
                    "Prefix": prefix,
                    "Delimiter": "/",
                    "MaxKeys": min(remaining, LIST_PAGE_MAX),
                }
                if cursor:
                    request["StartAfter"] = cursor
                page = self._client.list_objects_v2(**request)
                keys = [entry["Key"] for entry in page.get("Contents", ())]
                sub_prefixes = [entry["Prefix"] for entry in page.get("CommonPrefixes", ())]
                files.extend(
                    self._file(entry) for entry in page.get("Contents", ()) if not entry["Key"].endswith("/")
                )
                if not page.get("IsTruncated"):
                    return files, None
                seen = keys + sub_prefixes
                if not seen:  # truncated but empty: never loop on a page that does not advance
                    break
                cursor = max(seen)
                remaining -= len(seen)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "listing", directory, "s3:ListBucket") from exc
        return files, (self._relative(cursor) if cursor else None)

    # -------------------------------------------------------------- reading

    def download(self, remote: RemoteFile, local_path: Path) -> int:
        """GetObject pinned to the listed ETag, streamed to a 0600 temporary file, then renamed.

        Never mixes listing metadata with new bytes: if the key was overwritten since the listing the
        server answers 412 and nothing is written (FileVanishedError; the new version has a new
        identity and is picked up next tick).
        """
        key = self._key(remote.path)
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        if remote.etag:
            request["IfMatch"] = _entity_tag(remote.etag)
        try:
            response = self._client.get_object(**request)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "download", remote.path, "s3:GetObject") from exc

        body = response["Body"]
        announced = response.get("ContentLength")
        if announced is not None and int(announced) != remote.size:
            body.close()
            raise FileVanishedError(
                f"S3 download of {self._address(remote.path)}: the object has {announced} bytes, the listing said "
                f"{remote.size}; it changed since it was listed and will be picked up next tick"
            )

        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file with mode 0600: customer data is never readable by other users,
        # not even while it is being written. Same directory as the target so os.replace is atomic.
        fd, temporary = tempfile.mkstemp(dir=local_path.parent, prefix=f".{local_path.name}.", suffix=".part")
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    for chunk in body.iter_chunks(chunk_size=DOWNLOAD_CHUNK_BYTES):
                        out.write(chunk)
                        written += len(chunk)
                except (ClientError, BotoCoreError) as exc:
                    raise self._error(exc, "download", remote.path, "s3:GetObject") from exc
                finally:
                    body.close()
            if written != remote.size:
                raise FileVanishedError(
                    f"S3 download of {self._address(remote.path)}: received {written} bytes, the listing said "
                    f"{remote.size}; it will be retried on the next tick"
                )
            # No fsync: the file is a staging copy; after a crash the run starts over and downloads again.
            os.replace(temporary, local_path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return written

    def exists(self, remote_path: str) -> bool:
        if not _clean(remote_path):
            return False  # the root is a prefix, never a file
        return self._head(remote_path, "existence check", "s3:GetObject") is not None

    # -------------------------------------------------------------- writing

    def upload(self, local_path: Path, remote_path: str) -> int:
        """Write ``local_path`` straight to its final key.

        Unlike SFTP there is no ``<name>.part`` + rename: S3 publishes an object only when its PUT (or the
        CompleteMultipartUpload of a multipart upload) succeeds, so readers see the whole object or none
        of it, and a failed multipart upload is aborted by boto3. A rename would be a second full copy.
        """
        local_path = Path(local_path)
        size = local_path.stat().st_size
        key = self._key(remote_path)
        if not _clean(remote_path):
            raise TransportError(f"S3 upload of {local_path.name}: the target path is empty")
        try:
            self._client.upload_file(str(local_path), self._bucket, key, Config=_UPLOAD_CONFIG)
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise self._error(exc, "upload", remote_path, "s3:PutObject") from exc

        # Belt and braces: boto3 already sends a checksum with every part; the size check catches a
        # store that accepted something else (or a local file that changed while it was read).
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _http_status(exc) == 403:
                # Export-only policies often grant s3:PutObject without s3:GetObject (HeadObject needs it).
                log.info("S3 upload of %s: size not verified (HeadObject needs s3:GetObject)", self._address(remote_path))
                return size
            raise self._error(exc, "upload verification", remote_path, "s3:GetObject") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "upload verification", remote_path, "s3:GetObject") from exc
        if int(head["ContentLength"]) != size:
            raise TransportError(
                f"S3 upload of {self._address(remote_path)}: the stored object has {head['ContentLength']} bytes, "
                f"the local file {size}; the file changed while it was uploaded or the store is misbehaving"
            )
        return size

    def rename(self, remote_path: str, new_path: str, *, if_match: str | None = None) -> None:
        """Copy to ``new_path``, then delete ``remote_path`` (S3 has no rename).

        Needs s3:GetObject + s3:PutObject (the copy) and s3:DeleteObject (the delete). Idempotent: when the
        source is gone and the target exists, it returns; when a previous call copied but did not delete,
        this one recognises its copy (RENAME_MARKER) and deletes the source. An unrelated existing target is
        never replaced. ``if_match`` (the ETag seen at listing) refuses to move an object that was
        overwritten since, so a new delivery under the same name is not renamed away unprocessed.
        """
        permission = "s3:GetObject, s3:PutObject and s3:DeleteObject"
        source = self._head(remote_path, "rename", permission)
        if source is None:
            if self._head(new_path, "rename", permission) is not None:
                return  # an earlier call finished the move
            raise FileVanishedError(
                f"S3 rename of {self._address(remote_path)}: it does not exist, and neither does {self._address(new_path)}"
            )
        source_etag = str(source.get("ETag", "")).strip('"')
        if if_match and source_etag != if_match.strip('"'):
            raise FileVanishedError(
                f"S3 rename of {self._address(remote_path)}: the object changed since it was listed; it was left "
                "in place and will be picked up as a new version on the next tick"
            )

        target = self._head(new_path, "rename", permission)
        if target is not None:
            resumed = target.get("Metadata", {}).get(RENAME_MARKER) == source_etag and int(
                target.get("ContentLength", -1)
            ) == int(source.get("ContentLength", -2))
            if not resumed:
                raise TransportError(
                    f"S3 rename of {self._address(remote_path)}: {self._address(new_path)} already exists; "
                    "a rename never replaces a file"
                )
        else:
            self._copy(remote_path, new_path, source, source_etag, permission)
        self._delete_source(remote_path, source_etag, permission)

    def _copy(self, remote_path: str, new_path: str, source: Mapping[str, Any], etag: str, permission: str) -> None:
        # REPLACE is needed to add the marker; it then drops whatever is not restated, so the content
        # headers and storage class of the source are carried over explicitly.
        extra: dict[str, Any] = {
            "CopySourceIfMatch": _entity_tag(etag),  # copy exactly the version we looked at
            "MetadataDirective": "REPLACE",
            "Metadata": {**source.get("Metadata", {}), RENAME_MARKER: etag},
        }
        for header in ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl"):
            if source.get(header):
                extra[header] = source[header]
        if source.get("StorageClass"):
            extra["StorageClass"] = source["StorageClass"]
        try:
            self._client.copy(
                {"Bucket": self._bucket, "Key": self._key(remote_path)},
                self._bucket,
                self._key(new_path),
                ExtraArgs=extra,
                Config=_COPY_CONFIG,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "rename (copy)", remote_path, permission) from exc

    def _delete_source(self, remote_path: str, etag: str, permission: str) -> None:
        request = {"Bucket": self._bucket, "Key": self._key(remote_path), "IfMatch": _entity_tag(etag)}
        try:
            try:
                self._client.delete_object(**request)
            except ClientError as exc:
                if _error_code(exc) != "NotImplemented":
                    raise
                # Some S3-compatible stores do not support conditional deletes; the copy was pinned to
                # this ETag already, so an unconditional delete only risks the instants since the copy.
                del request["IfMatch"]
                self._client.delete_object(**request)
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, "rename (delete)", remote_path, "s3:DeleteObject")
            if isinstance(error, FileVanishedError):
                if isinstance(exc, ClientError) and _http_status(exc) == 412:
                    # Overwritten between copy and delete: the version we imported is at the target, the
                    # new one is a new delivery and must stay.
                    log.warning(
                        "S3 rename of %s: a new version appeared during the move; it was left in place",
                        self._address(remote_path),
                    )
                return  # already gone: the move is complete
            raise error from exc

    def delete(self, remote_path: str, *, if_match: str | None = None) -> None:
        """Remove a key; a missing key is not an error. ``if_match`` refuses to delete a changed object."""
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key(remote_path)}
        if if_match:
            request["IfMatch"] = _entity_tag(if_match)
        try:
            self._client.delete_object(**request)
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, "delete", remote_path, "s3:DeleteObject")
            if isinstance(error, FileVanishedError):
                if isinstance(exc, ClientError) and _http_status(exc) == 412:
                    raise FileVanishedError(
                        f"S3 delete of {self._address(remote_path)}: the object changed since it was listed; "
                        "it was not deleted"
                    ) from exc
                return
            raise error from exc
