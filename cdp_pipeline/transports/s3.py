"""S3 (and S3-compatible stores) as a transport: key prefixes under ``location.prefix`` are folders.

The boto3 client is passed in: under Dagster it comes from ``dagster_aws.s3.S3Resource(...).get_client()``,
elsewhere (CLI, benchmarks) from :func:`cdp_pipeline.transports.s3_client.s3_client_for`. This module
never imports dagster.

What S3 changes compared to a file server, and where each part lives:

* reads are pinned to the ETag seen at listing time, uploads go straight to the final key
  (:mod:`~cdp_pipeline.transports.s3_transfers`);
* there are no folders and no rename: "directories" are key prefixes and a rename is copy + delete
  (:mod:`~cdp_pipeline.transports.s3_finishing`);
* listing large prefixes costs one request per 1,000 keys, so sensors use :meth:`S3Transport.list_files_after`
  to look at a bounded slice per tick instead of the whole prefix every time
  (:mod:`~cdp_pipeline.transports.s3_listing`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdp_pipeline.config.connection import S3Location
from cdp_pipeline.transports import s3_finishing, s3_listing, s3_transfers
from cdp_pipeline.transports.base import RemoteFile, Transport
from cdp_pipeline.transports.s3_bucket import BucketPrefix, clean_path
from cdp_pipeline.transports.s3_client import credentials_from_environment, s3_client_for

__all__ = ["S3Transport"]


class S3Transport(Transport):
    """A bucket prefix as a folder tree. ``client`` is a boto3 S3 client; it is closed only if owned.

    Besides the Transport interface it offers sliced listing (the ``SlicedListing`` capability),
    ETag-pinned ``rename``/``delete`` (``if_match``) and the keys its listings refused
    (``RefusedEntries``).
    """

    def __init__(self, client: Any, location: S3Location, *, owns_client: bool = False) -> None:
        self.root = BucketPrefix(client, location)
        self._owns_client = owns_client
        self.uri = self.root.uri

    @classmethod
    def from_environment(cls, location: S3Location, environ: Mapping[str, str] | None = None) -> S3Transport:
        """A transport with its own client, credentials read from the variables the location names."""
        key_id, secret, token = credentials_from_environment(location, os.environ if environ is None else environ)
        return cls(s3_client_for(location, key_id, secret, token), location, owns_client=True)

    def close(self) -> None:
        if self._owns_client:
            self.root.client.close()

    def list_files(self, directory: str) -> list[RemoteFile]:
        return s3_listing.list_files(self.root, directory)

    def refused_entries(self) -> list[str]:
        """Problem lines for the keys the listings left out since the last call (see ``RefusedEntries``):
        a transport kept across sensor ticks must not report a key renamed meanwhile."""
        lines = list(self.root.refused.values())
        self.root.refused.clear()
        return lines

    def list_files_after(self, directory: str, after: str | None, max_keys: int) -> tuple[list[RemoteFile], str | None]:
        """One bounded slice of ``list_files(directory)``; see :func:`s3_listing.list_files_after`."""
        return s3_listing.list_files_after(self.root, directory, after, max_keys)

    def download(self, remote: RemoteFile, local_path: Path) -> int:
        return s3_transfers.download(self.root, remote, local_path)

    def upload(self, local_path: Path, remote_path: str) -> int:
        return s3_transfers.upload(self.root, local_path, remote_path)

    def exists(self, remote_path: str) -> bool:
        if not clean_path(remote_path):
            return False  # the root is a prefix, never a file
        return self.root.head(remote_path, "existence check", "s3:GetObject") is not None

    def rename(self, remote_path: str, new_path: str, *, if_match: str | None = None) -> None:
        s3_finishing.rename(self.root, remote_path, new_path, if_match=if_match)

    def delete(self, remote_path: str, *, if_match: str | None = None) -> None:
        s3_finishing.delete(self.root, remote_path, if_match=if_match)

    def rename_if_unchanged(self, remote_path: str, new_path: str, etag: str) -> None:
        s3_finishing.rename(self.root, remote_path, new_path, if_match=etag)

    def delete_if_unchanged(self, remote_path: str, etag: str) -> None:
        s3_finishing.delete(self.root, remote_path, if_match=etag)
