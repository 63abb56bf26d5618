"""Moving bytes to and from S3: downloads pinned to the listed ETag, uploads straight to the final key.

An object appears only once its PUT or multipart upload has completed, so there are no
half-written objects to guard against, but a key can be overwritten between our listing and our
read. Every read is therefore pinned to the ETag seen at listing time (``GetObject IfMatch``); a
changed object fails with ``FileVanishedError`` and is picked up again, as a new identity, on the
next tick.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from cdp_pipeline.errors import FileVanishedError, TransportError
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.s3_bucket import BucketPrefix, clean_path, entity_tag
from cdp_pipeline.transports.s3_errors import http_status

__all__ = ["DOWNLOAD_CHUNK_BYTES", "UPLOAD_PART_BYTES", "download", "upload"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Downloads are streamed in pieces of this size: large enough that Python overhead is negligible
#: (streamed get_object reached ~555 MB/s against a local server), small enough to keep memory flat.
DOWNLOAD_CHUNK_BYTES = 8 * MiB
#: boto3's default 8 MB parts were ~5x slower than 64 MB parts against a local S3 server; 64 MB
#: parts also keep a 50 GB file under S3's 10,000-part limit.
UPLOAD_PART_BYTES = 64 * MiB

_UPLOAD_CONFIG = TransferConfig(
    multipart_threshold=UPLOAD_PART_BYTES,
    multipart_chunksize=UPLOAD_PART_BYTES,
    max_concurrency=4,  # I/O bound; more threads only add memory (4 x 64 MB buffers at most)
)


def download(root: BucketPrefix, remote: RemoteFile, local_path: Path) -> int:
    """GetObject pinned to the listed ETag, streamed to a 0600 temporary file, then renamed.

    Never mixes listing metadata with new bytes: if the key was overwritten since the listing the
    server answers 412 and nothing is written (FileVanishedError; the new version has a new
    identity and is picked up next tick).
    """
    key = root.key(remote.path)
    request: dict[str, Any] = {"Bucket": root.bucket, "Key": key}
    if remote.etag:
        request["IfMatch"] = entity_tag(remote.etag)
    try:
        response = root.client.get_object(**request)
    except (ClientError, BotoCoreError) as exc:
        raise root.error(exc, "download", remote.path, "s3:GetObject") from exc

    body = response["Body"]
    announced = response.get("ContentLength")
    if announced is not None and int(announced) != remote.size:
        body.close()
        raise FileVanishedError(
            f"S3 download of {root.address(remote.path)}: the object has {announced} bytes, the listing said "
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
                raise root.error(exc, "download", remote.path, "s3:GetObject") from exc
            finally:
                body.close()
        if written != remote.size:
            raise FileVanishedError(
                f"S3 download of {root.address(remote.path)}: received {written} bytes, the listing said "
                f"{remote.size}; it will be retried on the next tick"
            )
        # No fsync: the file is a staging copy; after a crash the run starts over and downloads again.
        os.replace(temporary, local_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return written


def upload(root: BucketPrefix, local_path: Path, remote_path: str) -> int:
    """Write ``local_path`` straight to its final key.

    Unlike SFTP there is no ``<name>.part`` + rename: S3 publishes an object only when its PUT (or the
    CompleteMultipartUpload of a multipart upload) succeeds, so readers see the whole object or none
    of it, and a failed multipart upload is aborted by boto3. A rename would be a second full copy.
    """
    local_path = Path(local_path)
    size = local_path.stat().st_size
    key = root.key(remote_path)
    if not clean_path(remote_path):
        raise TransportError(f"S3 upload of {local_path.name}: the target path is empty")
    try:
        root.client.upload_file(str(local_path), root.bucket, key, Config=_UPLOAD_CONFIG)
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        raise root.error(exc, "upload", remote_path, "s3:PutObject") from exc

    # Belt and braces: boto3 already sends a checksum with every part; the size check catches a
    # store that accepted something else (or a local file that changed while it was read).
    try:
        head = root.client.head_object(Bucket=root.bucket, Key=key)
    except ClientError as exc:
        if http_status(exc) == 403:
            # Export-only policies often grant s3:PutObject without s3:GetObject (HeadObject needs it).
            log.info("S3 upload of %s: size not verified (HeadObject needs s3:GetObject)", root.address(remote_path))
            return size
        raise root.error(exc, "upload verification", remote_path, "s3:GetObject") from exc
    except BotoCoreError as exc:
        raise root.error(exc, "upload verification", remote_path, "s3:GetObject") from exc
    if int(head["ContentLength"]) != size:
        raise TransportError(
            f"S3 upload of {root.address(remote_path)}: the stored object has {head['ContentLength']} bytes, "
            f"the local file {size}; the file changed while it was uploaded or the store is misbehaving"
        )
    return size
