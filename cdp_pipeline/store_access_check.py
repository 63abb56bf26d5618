"""Pre-flight checks of the store's own resources, beside each connection's (``cdp-pipeline check``):
the variables ``store.yaml`` names are set, and the work bucket takes, encrypts and gives back an
object and lets it be deleted.

Without them a missing key or a missing permission on the work bucket surfaces only when the first
step of the first delivery runs, after the partner's file was already fetched.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cdp_pipeline.check_results import CheckResult, variable_checks
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.config.s3_endpoint import S3Endpoint
from cdp_pipeline.config.work_storage import WorkStorageS3
from cdp_pipeline.errors import CdpError

#: below the work prefix, beside the connections' folders; no connection can be named so.
PROBE_FOLDER = "_cdp_check/"


def _key_variables(endpoint: S3Endpoint, what: str) -> list[tuple[str, str]]:
    return [
        (name, f"{what}: {purpose}")
        for name, purpose in ((endpoint.access_key_id_env, "access key id"), (endpoint.secret_access_key_env, "secret access key"))
        if name
    ]


def store_variables(project: ProjectConfig) -> list[tuple[str, str]]:
    """(variable, what it holds) for every ``*_env`` of ``store.yaml``, in file order."""
    named: list[tuple[str, str]] = []
    lake = project.store.ducklake if project.store.backend == "ducklake" else None
    if lake is not None:
        named.append((lake.catalog_dsn_env, "store.ducklake: the catalog's connection string"))
        if lake.s3 is not None:
            named += _key_variables(lake.s3, "store.ducklake.s3")
    if project.work_storage.type == "s3" and project.work_storage.s3 is not None:
        named += _key_variables(project.work_storage.s3, "work_storage.s3")
    return named


def store_checks(project: ProjectConfig, env: Mapping[str, str]) -> list[CheckResult]:
    variables = store_variables(project)
    results = variable_checks(variables, env)
    settings = project.work_storage.s3 if project.work_storage.type == "s3" else None
    if settings is None:
        return results
    name = f"work storage s3://{settings.bucket}/{settings.prefix}"
    unset = [variable for variable, _ in _key_variables(settings, "work_storage.s3") if not env.get(variable)]
    if unset:
        return [*results, CheckResult(name, False, f"not checked: {', '.join(unset)} not set", "set the variables above, then check again")]
    return [*results, _work_bucket_probe(settings, env, name)]


def _work_bucket_probe(settings: WorkStorageS3, env: Mapping[str, str], name: str) -> CheckResult:
    """Write, inspect and delete one small object, as every import step does with its files."""
    # boto3 only where a bucket is configured: ``cdp-pipeline run`` imports this module on its
    # way to deciding that there is nothing to run, where a third of a second matters.
    from cdp_pipeline.work_storage.bucket import WorkBucket
    relative = f"{PROBE_FOLDER}{secrets.token_hex(8)}.tmp"
    fix = (
        "give the pipeline's credentials s3:PutObject, s3:GetObject, s3:ListBucket and s3:DeleteObject on the prefix"
        + (" and kms:GenerateDataKey / kms:Decrypt on the key" if settings.server_side_encryption == "aws:kms" else "")
    )
    try:
        bucket = WorkBucket(settings, env)
        # Deleting the not-yet-written object proves the delete permission first, so a check
        # without it leaves no object behind that it could not remove.
        try:
            bucket.delete([relative])
        except CdpError as error:
            return CheckResult(name, False, f"no probe was written: deleting is refused ({error})", fix)
        with tempfile.TemporaryDirectory() as scratch:
            probe = Path(scratch) / "probe"
            probe.write_bytes(b"cdp_pipeline check: removed again at once\n")
            bucket.put_file(probe, relative)
        try:
            encryption = bucket.encryption_of(relative)
        finally:
            bucket.delete([relative])
        left = [item.key for item in bucket.objects(PROBE_FOLDER) if item.key == relative]
    except CdpError as error:
        return CheckResult(name, False, str(error), fix)
    if left:
        return CheckResult(name, False, f"the probe object {relative} was not deleted", fix)
    if encryption != settings.server_side_encryption:
        return CheckResult(
            name, False, f"an object written with {settings.server_side_encryption} is stored with {encryption or 'no encryption'}",
            "check the bucket's encryption settings and policies: the work folders hold customer plaintext",
        )
    return CheckResult(name, True, f"an object was written ({encryption}), read back and deleted")
