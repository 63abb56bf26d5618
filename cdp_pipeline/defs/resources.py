"""Resources: the store location, and per connection its transport and PGP keys.

Secrets reach the engine only through these resources, as ``dg.EnvVar`` values: the UI and the
run config show the variable's name, never the secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, TypeAdapter

from cdp_pipeline.config.connection import Connection, FtpLocation, LocalLocation, Location, S3Location, SftpLocation
from cdp_pipeline.config.loading import ProjectConfig, load_project
from cdp_pipeline.transports.base import Transport

# Dagster masks fields marked secret in the UI and in the run config it stores.
_SECRET: dict[str, Any] = {"dagster__is_secret": True}
_LOCATION: TypeAdapter[Location] = TypeAdapter(Location)


class CdpProjectResource(dg.ConfigurableResource):
    """Where the configuration and the store live (CDP_CONFIG_DIR and CDP_HOME)."""

    config_dir: str
    home: str

    def load(self) -> ProjectConfig:
        return load_project(Path(self.config_dir), Path(self.home))


class TransportResource(dg.ConfigurableResource):
    """One connection's remote folder: local, SFTP (paramiko), S3 (dagster-aws S3Resource) or FTP/FTPS (ftplib)."""

    location_json: str
    home: str
    password: str | None = Field(default=None, json_schema_extra=_SECRET)
    private_key: str | None = Field(default=None, json_schema_extra=_SECRET)
    passphrase: str | None = Field(default=None, json_schema_extra=_SECRET)
    aws_access_key_id: str | None = Field(default=None, json_schema_extra=_SECRET)
    aws_secret_access_key: str | None = Field(default=None, json_schema_extra=_SECRET)
    aws_session_token: str | None = Field(default=None, json_schema_extra=_SECRET)

    def location(self) -> Location:
        return _LOCATION.validate_python(json.loads(self.location_json))

    def open(self) -> Transport:
        location = self.location()
        if isinstance(location, LocalLocation):
            from cdp_pipeline.transports.local import LocalTransport

            root = Path(location.path).expanduser()
            root = root if root.is_absolute() else Path(self.home) / root
            return LocalTransport(root)
        if isinstance(location, SftpLocation):
            from cdp_pipeline.transports.sftp import SftpTransport
            from cdp_pipeline.transports.sftp_credentials import SftpSecrets

            return SftpTransport(location, SftpSecrets(password=self.password, private_key=self.private_key, passphrase=self.passphrase))
        if isinstance(location, S3Location):
            from dagster_aws.s3 import S3Resource

            from cdp_pipeline.transports.s3 import S3Transport

            client = S3Resource(
                region_name=location.region,
                endpoint_url=location.endpoint_url,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
                aws_session_token=self.aws_session_token,
            ).get_client()
            return S3Transport(client, location)
        if isinstance(location, FtpLocation):
            from cdp_pipeline.config.connection import PLAIN_FTP_WARNING
            from cdp_pipeline.transports.ftp import FtpSecrets, FtpTransport

            if location.tls == "none":
                # The run's own log, so whoever reads the run sees that it went out in clear text.
                dg.get_dagster_logger().warning(PLAIN_FTP_WARNING % (location.host, location.effective_port))
            return FtpTransport(location, FtpSecrets(password=self.password))
        raise TypeError(f"unsupported location {location!r}")


class PgpResource(dg.ConfigurableResource):
    """A connection's PGP keys. Up to three private keys decrypt (rotation); the public key encrypts exports."""

    private_key: str | None = Field(default=None, json_schema_extra=_SECRET)
    previous_private_key: str | None = Field(default=None, json_schema_extra=_SECRET)
    older_private_key: str | None = Field(default=None, json_schema_extra=_SECRET)
    passphrase: str | None = Field(default=None, json_schema_extra=_SECRET)
    public_key: str | None = None
    public_key_fingerprint: str | None = None
    signer_public_key: str | None = None
    signer_fingerprint: str | None = None
    expiry_warning_days: int = 21

    @property
    def can_decrypt(self) -> bool:
        return any((self.private_key, self.previous_private_key, self.older_private_key))

    def keyring(self):
        from cdp_pipeline.crypto.keyring import PgpKeyring

        return PgpKeyring(
            private_keys=[k for k in (self.private_key, self.previous_private_key, self.older_private_key) if k],
            passphrase=self.passphrase,
            public_key=self.public_key,
            public_key_fingerprint=self.public_key_fingerprint,
            signer_public_key=self.signer_public_key,
            signer_fingerprint=self.signer_fingerprint,
        )


def _env(name: str | None):
    return dg.EnvVar(name) if name else None


def transport_resource(location: Location, home: Path) -> TransportResource:
    secrets: dict = {}
    if isinstance(location, SftpLocation):
        secrets = {
            "password": _env(location.auth.password_env),
            "private_key": _env(location.auth.private_key_env),
            "passphrase": _env(location.auth.passphrase_env),
        }
    elif isinstance(location, FtpLocation):
        secrets = {"password": _env(location.password_env)}
    elif isinstance(location, S3Location):
        secrets = {
            "aws_access_key_id": _env(location.access_key_id_env),
            "aws_secret_access_key": _env(location.secret_access_key_env),
            "aws_session_token": _env(location.session_token_env),
        }
    return TransportResource(location_json=location.model_dump_json(), home=str(home), **{k: v for k, v in secrets.items() if v is not None})


def pgp_resource(connection: Connection) -> PgpResource:
    pgp = connection.pgp
    if pgp is None:
        return PgpResource()
    keys = [dg.EnvVar(name) for name in pgp.private_keys_env[:3]]
    fields = dict(zip(("private_key", "previous_private_key", "older_private_key"), keys, strict=False))
    return PgpResource(
        **fields,
        **({"passphrase": dg.EnvVar(pgp.passphrase_env)} if pgp.passphrase_env else {}),
        **({"public_key": dg.EnvVar(pgp.public_key_env)} if pgp.public_key_env else {}),
        **({"signer_public_key": dg.EnvVar(pgp.signer_public_key_env)} if pgp.signer_public_key_env else {}),
        public_key_fingerprint=pgp.public_key_fingerprint,
        signer_fingerprint=pgp.signer_fingerprint,
        expiry_warning_days=pgp.expiry_warning_days,
    )


def transport_key(connection: str) -> str:
    return f"{connection}_transport"


def export_transport_key(connection: str, goal: str) -> str:
    return f"{connection}_{goal}_target"


def pgp_key(connection: str) -> str:
    return f"{connection}_pgp"


def connection_resources(project: ProjectConfig, only: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """Every connection's resources, or with ``only`` that connection's (the CLI runs one)."""
    resources: dict[str, dg.ConfigurableResource] = {
        "cdp_project": CdpProjectResource(config_dir=str(project.config_dir), home=str(project.home))
    }
    for connection in project.connections.values():
        if only is not None and connection.name != only:
            continue
        resources[transport_key(connection.name)] = transport_resource(connection.source, project.home)
        resources[pgp_key(connection.name)] = pgp_resource(connection)
        for goal in connection.export_goals:
            if goal.target.location is not None:
                resources[export_transport_key(connection.name, goal.name)] = transport_resource(goal.target.location, project.home)
    return resources


@dg.definitions
def defs() -> dg.Definitions:
    from cdp_pipeline.defs.project import project_config

    return dg.Definitions(resources=connection_resources(project_config()))
