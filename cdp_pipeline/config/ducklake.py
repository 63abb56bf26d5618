"""The ``store.ducklake`` settings: a shared store whose catalog is in PostgreSQL and whose data
files are on S3-compatible storage or in a shared folder (``store.backend: ducklake``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from cdp_pipeline.config.connection import _env_name
from cdp_pipeline.config.csv_options import StrictModel
from cdp_pipeline.config.s3_endpoint import S3Endpoint


class DuckLakeS3(S3Endpoint):
    """Where the lake's Parquet files live on S3 (or MinIO, Ceph ... through ``endpoint_url``)."""

    #: folder inside the bucket; the lake writes below ``<prefix>/``.
    prefix: str = ""


class DuckLakeSettings(StrictModel):
    #: environment variable holding the libpq connection string of the catalog database
    #: (``host=... port=5432 dbname=lake user=cdp password=...``): the password stays out of the YAML.
    catalog_dsn_env: str
    #: a folder every writer and analyst reaches under the same path (NFS, a mounted volume); or ``s3``.
    data_path: str | None = None
    s3: DuckLakeS3 | None = None
    #: attempts of a write transaction that DuckLake refused because another writer committed first.
    write_attempts: int = Field(default=30, ge=1, le=1000)

    _names = field_validator("catalog_dsn_env")(_env_name)

    @model_validator(mode="after")
    def _one_data_location(self) -> DuckLakeSettings:
        if (self.data_path is None) == (self.s3 is None):
            raise ValueError("give exactly one of data_path (a shared folder) and s3 (a bucket) for the lake's data files")
        return self


@dataclass(frozen=True)
class DuckLakeLocation:
    """A lake to open: its settings, and ``data_path`` resolved against CDP_HOME."""

    settings: DuckLakeSettings
    data_folder: Path | None = None
