"""S3Transport against moto's S3 server over HTTP on 127.0.0.1.

Clients are built the way users get them: dagster-aws ``S3Resource(...).get_client()`` inside Dagster,
``s3_client_for`` outside it. Only the pure error classifier is fed constructed exceptions.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from dagster_aws.s3 import S3Resource

from cdp_pipeline.config.connection import S3Location
from cdp_pipeline.errors import FileVanishedError, TransientError, TransientTransportError, TransportError
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.s3 import S3Transport
from cdp_pipeline.transports.s3_client import s3_client_for
from cdp_pipeline.transports.s3_errors import classify_s3_error
from cdp_pipeline.transports.s3_finishing import RENAME_MARKER
from cdp_pipeline_tests.fixtures.moto_s3 import ACCESS_KEY_ENV, SECRET_KEY_ENV, S3Bucket, S3Iam

PREFIX = "landing/cdp"


def dagster_client(location: S3Location, *, max_attempts: int = 5) -> Any:
    """The client a Dagster asset gets: S3Resource configured from the connection's location."""
    return S3Resource(
        endpoint_url=location.endpoint_url,
        region_name=location.region,
        aws_access_key_id=os.environ[location.access_key_id_env],
        aws_secret_access_key=os.environ[location.secret_access_key_env],
        max_attempts=max_attempts,
    ).get_client()


def plain_client(location: S3Location) -> Any:
    return s3_client_for(
        location, os.environ[location.access_key_id_env], os.environ[location.secret_access_key_env], None
    )


CLIENT_BUILDERS: dict[str, Callable[[S3Location], Any]] = {
    "dagster_s3_resource": dagster_client,
    "s3_client_for": plain_client,
}


@pytest.fixture(params=sorted(CLIENT_BUILDERS))
def transport(request: pytest.FixtureRequest, s3_bucket: S3Bucket) -> S3Transport:
    location = s3_bucket.location_with(PREFIX)
    return S3Transport(CLIENT_BUILDERS[request.param](location), location)


@pytest.fixture
def dagster_transport(s3_bucket: S3Bucket) -> S3Transport:
    location = s3_bucket.location_with(PREFIX)
    return S3Transport(dagster_client(location), location)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- listing


def test_list_files_returns_direct_children_relative_to_the_prefix(transport: S3Transport, s3_bucket: S3Bucket) -> None:
    before = time.time()
    etag_a = s3_bucket.put(f"{PREFIX}/in/a.csv", "id\n1\n")
    s3_bucket.put(f"{PREFIX}/in/b.csv", "id\n22\n")
    s3_bucket.put(f"{PREFIX}/in/", "")  # a "folder" placeholder as the AWS console creates it
    s3_bucket.put(f"{PREFIX}/in/done/old.csv", "x")
    s3_bucket.put(f"{PREFIX}/top.csv", "x")
    s3_bucket.put(f"{PREFIX}x/in/a.csv", "outside the prefix, same leading characters")
    s3_bucket.put("elsewhere/in/a.csv", "outside the prefix")

    files = transport.list_files("in")

    assert [f.path for f in files] == ["in/a.csv", "in/b.csv"]
    a = files[0]
    assert (a.size, a.etag, a.name) == (len("id\n1\n"), etag_a, "a.csv")
    assert '"' not in a.etag
    assert before - 2 <= a.mtime <= time.time() + 2
    # the same directory however it is spelt
    assert transport.list_files("/in/") == files
    assert transport.list_files("./in") == files
    assert [f.path for f in transport.list_files(".")] == ["top.csv"]
    assert [f.path for f in transport.list_files("in/done")] == ["in/done/old.csv"]
    assert transport.list_files("missing") == []
    assert transport.uri == f"s3://{s3_bucket.name}/{PREFIX}"


def test_listed_keys_round_trip_exactly_and_unaddressable_keys_are_refused_by_name(transport: S3Transport, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    # "in/." was once cleaned into the object "in": a download read another object, and a delete
    # or rename after the import would have hit that one.
    s3_bucket.put(f"{PREFIX}/in", "the object a cleaned 'in/.' would address")
    s3_bucket.put(f"{PREFIX}/in/a.csv", "a")
    odd = ["in/.", "in/..", "in//a.csv", "in/./a.csv", "in/../a.csv"]
    for relative in odd:
        s3_bucket.put(f"{PREFIX}/{relative}", f"the object {relative}")
    exact = ["in/a.csv", "in/b.csv.", "in/c..csv", "in/d...", "in/.e.csv"]
    for relative in exact[1:]:
        s3_bucket.put(f"{PREFIX}/{relative}", f"the object {relative}")
    stored = set(s3_bucket.keys(PREFIX))
    stored_odd = [relative for relative in odd if f"{PREFIX}/{relative}" in stored]
    assert "in/." in stored_odd and "in//a.csv" in stored_odd  # what the server kept verbatim is checked below

    files = transport.list_files("in")

    assert [f.path for f in files] == sorted(exact)  # key order
    for remote in files:
        local = tmp_path / remote.name.replace(".", "_")
        transport.download(remote, local)
        assert local.read_bytes() == s3_bucket.get(f"{PREFIX}/{remote.path}")
        assert transport.exists(remote.path)
    refused = transport.refused_entries()
    refused_keys = sorted({line.split(": ", 1)[0] for line in refused if line.startswith("s3://")})
    # Only the odd keys directly in the listed prefix ("in//a.csv" lies under the sub-prefix "in/").
    listed_odd = [r for r in stored_odd if "/" not in r[len("in/") :]]
    assert refused_keys == sorted(f"s3://{s3_bucket.name}/{PREFIX}/{r}" for r in listed_odd)
    assert all("Rename the object" in line for line in refused)

    transport.rename("in/b.csv.", "in/done/b.csv.")
    transport.delete("in/d...")
    after = set(s3_bucket.keys(PREFIX))
    assert after == (stored - {f"{PREFIX}/in/b.csv.", f"{PREFIX}/in/d..."}) | {f"{PREFIX}/in/done/b.csv."}
    assert s3_bucket.get(f"{PREFIX}/in") == b"the object a cleaned 'in/.' would address"

    # The sliced listing refuses the same keys and still advances past them.
    sliced: list[str] = []
    after_key: str | None = None
    for _ in range(20):
        page, after_key = transport.list_files_after("in", after_key, 2)
        sliced.extend(f.path for f in page)
        if after_key is None:
            break
    assert sliced == ["in/.e.csv", "in/a.csv", "in/c..csv"]


def _put_many(bucket: S3Bucket, keys: list[str]) -> None:
    # Loopback round-trips dominate; a few threads cut setup time without loading the 2 shared cores much.
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda key: bucket.put(key, key[-5:]), keys))


def test_list_files_paginates_beyond_1000_keys(dagster_transport: S3Transport, s3_bucket: S3Bucket) -> None:
    keys = [f"{PREFIX}/many/f{i:05d}.csv" for i in range(1001)]
    _put_many(s3_bucket, keys + [f"{PREFIX}/many/sub/deeper.csv"])
    calls: list[dict[str, Any]] = []
    dagster_transport.root.client.meta.events.register(
        "before-parameter-build.s3.ListObjectsV2", lambda params, **_: calls.append(dict(params))
    )

    files = dagster_transport.list_files("many")

    assert [f.path for f in files] == [k[len(PREFIX) + 1 :] for k in keys]
    assert len(calls) == 2, "1001 keys need two ListObjectsV2 pages"
    assert all(call["Delimiter"] == "/" and call["Prefix"] == f"{PREFIX}/many/" for call in calls)

    # bounded slices over the same large prefix
    calls.clear()
    first, cursor = dagster_transport.list_files_after("many", None, 600)
    assert len(first) == 600 and cursor == first[-1].path == "many/f00599.csv"
    second, cursor = dagster_transport.list_files_after("many", cursor, 600)
    assert cursor is None
    assert [f.path for f in first + second] == [f.path for f in files]
    assert [call["MaxKeys"] for call in calls] == [600, 600]


def test_list_files_after_walks_a_prefix_in_bounded_slices(transport: S3Transport, s3_bucket: S3Bucket) -> None:
    names = ["a.csv", "b.csv", "m.csv", "n.csv", "p.csv", "x.csv", "y.csv"]
    for name in names:
        s3_bucket.put(f"{PREFIX}/drop/{name}", name)
    for deeper in ("done/1.csv", "done/2.csv", "done/3.csv"):  # rolled up into one sub-prefix "drop/done/"
        s3_bucket.put(f"{PREFIX}/drop/{deeper}", "x")

    seen: list[str] = []
    cursors: list[str | None] = []
    cursor: str | None = None
    for _ in range(10):
        page, cursor = transport.list_files_after("drop", cursor, 3)
        assert len(page) <= 3
        seen.extend(f.path for f in page)
        cursors.append(cursor)
        if cursor is None:
            break
    assert seen == [f"drop/{n}" for n in names]
    # 8 entries in key order (a, b, done/, m, n, p, x, y) in slices of 3; the sub-prefix "done/" counts
    # as an entry, ends the first slice, and is skipped as a whole when the walk continues after it
    assert cursors == ["drop/done/", "drop/p.csv", None]

    # StartAfter is a position, not a key that must exist (dagster-aws' since_key raises in that case)
    page, _ = transport.list_files_after("drop", "drop/m.csv-deleted-meanwhile", 10)
    assert [f.path for f in page] == ["drop/n.csv", "drop/p.csv", "drop/x.csv", "drop/y.csv"]
    with pytest.raises(ValueError):
        transport.list_files_after("drop", None, 0)


# ---------------------------------------------------------------- download


def test_download_streams_to_a_private_file_atomically(transport: S3Transport, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 17)  # more than one 8 MiB chunk
    s3_bucket.put(f"{PREFIX}/in/big.csv", data)
    (remote,) = transport.list_files("in")
    target = tmp_path / "staging" / "big.csv"

    assert transport.download(remote, target) == len(data)

    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(target.parent) == ["big.csv"]


def test_download_refuses_an_object_overwritten_after_listing(transport: S3Transport, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    s3_bucket.put(f"{PREFIX}/in/a.csv", "id\n1\n")
    (remote,) = transport.list_files("in")
    s3_bucket.put(f"{PREFIX}/in/a.csv", "id\n2\n")  # same size: only the ETag tells the versions apart

    with pytest.raises(FileVanishedError, match="changed since it was listed") as caught:
        transport.download(remote, tmp_path / "a.csv")

    assert not isinstance(caught.value, TransientError)
    assert "next tick" in str(caught.value)
    assert leftovers(tmp_path) == []
    # the new version has a new identity and downloads fine from a fresh listing
    (fresh,) = transport.list_files("in")
    assert fresh.identity != remote.identity
    assert transport.download(fresh, tmp_path / "a.csv") == 5
    assert (tmp_path / "a.csv").read_text() == "id\n2\n"


def test_download_of_a_vanished_object(transport: S3Transport, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    s3_bucket.put(f"{PREFIX}/in/a.csv", "id\n1\n")
    (remote,) = transport.list_files("in")
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=f"{PREFIX}/in/a.csv")

    with pytest.raises(FileVanishedError, match="no longer exists"):
        transport.download(remote, tmp_path / "a.csv")
    # without an ETag pin (e.g. a RemoteFile built by hand) NoSuchKey is a vanished file as well
    with pytest.raises(FileVanishedError, match="no longer exists"):
        transport.download(RemoteFile(path="in/a.csv", size=5, mtime=0.0), tmp_path / "a.csv")
    assert leftovers(tmp_path) == []


def test_download_checks_the_size_against_the_listing(transport: S3Transport, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    s3_bucket.put(f"{PREFIX}/in/a.csv", "id\n1\n")
    (remote,) = transport.list_files("in")
    lying = RemoteFile(path=remote.path, size=remote.size + 1, mtime=remote.mtime, etag=remote.etag)

    with pytest.raises(FileVanishedError, match="listing said 6"):
        transport.download(lying, tmp_path / "a.csv")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- upload, exists


def test_upload_writes_the_final_key_directly(transport: S3Transport, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    local = tmp_path / "export.csv"
    local.write_text("id,email\n1,a@example.com\n")

    assert transport.upload(local, "out/export.csv") == local.stat().st_size

    assert s3_bucket.get(f"{PREFIX}/out/export.csv") == local.read_bytes()
    assert s3_bucket.keys() == [f"{PREFIX}/out/export.csv"]  # no .part object, ever
    assert transport.exists("out/export.csv")
    assert not transport.exists("out/other.csv")
    assert not transport.exists("out")  # a prefix is not a file
    assert not transport.exists("")


def test_multipart_object_round_trip(dagster_transport: S3Transport, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """A file above the 64 MB part size: multipart upload, ETag pin on a multipart ETag, rename copy."""
    local = tmp_path / "big.csv"
    with local.open("wb") as out:
        out.write(os.urandom(1024 * 1024) * 65)  # 65 MiB: two parts
    assert dagster_transport.upload(local, "in/big.csv") == 65 * 1024 * 1024

    (remote,) = dagster_transport.list_files("in")
    assert remote.etag.endswith("-2")
    assert dagster_transport.download(remote, tmp_path / "back.csv") == remote.size
    assert (tmp_path / "back.csv").read_bytes() == local.read_bytes()

    dagster_transport.rename("in/big.csv", "in/big.csv.done", if_match=remote.etag)
    assert s3_bucket.keys(f"{PREFIX}/in/") == [f"{PREFIX}/in/big.csv.done"]


# ---------------------------------------------------------------- rename, delete


def test_rename_copies_then_deletes_and_is_idempotent(transport: S3Transport, s3_bucket: S3Bucket) -> None:
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name, Key=f"{PREFIX}/in/a.csv", Body=b"id\n1\n", ContentType="text/csv", Metadata={"origin": "erp"}
    )
    (remote,) = transport.list_files("in")

    transport.rename("in/a.csv", "in/a.csv.done", if_match=remote.etag)

    assert s3_bucket.keys(f"{PREFIX}/") == [f"{PREFIX}/in/a.csv.done"]
    assert s3_bucket.get(f"{PREFIX}/in/a.csv.done") == b"id\n1\n"
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=f"{PREFIX}/in/a.csv.done")
    assert head["ContentType"] == "text/csv"
    assert head["Metadata"] == {"origin": "erp", RENAME_MARKER: remote.etag}

    transport.rename("in/a.csv", "in/a.csv.done")  # again: source gone, target there → nothing to do
    transport.rename("in/a.csv", "in/a.csv.done", if_match=remote.etag)
    with pytest.raises(FileVanishedError):
        transport.rename("in/a.csv", "done/a.csv")  # neither source nor target: nothing was moved
    assert s3_bucket.keys(f"{PREFIX}/") == [f"{PREFIX}/in/a.csv.done"]


def test_rename_into_another_directory_and_never_over_an_existing_file(transport: S3Transport, s3_bucket: S3Bucket) -> None:
    s3_bucket.put(f"{PREFIX}/in/a.csv", "new")
    s3_bucket.put(f"{PREFIX}/done/a.csv", "yesterday")

    with pytest.raises(TransportError, match="already exists") as caught:
        transport.rename("in/a.csv", "done/a.csv")
    assert not isinstance(caught.value, (FileVanishedError, TransientError))
    assert s3_bucket.get(f"{PREFIX}/done/a.csv") == b"yesterday"
    assert s3_bucket.get(f"{PREFIX}/in/a.csv") == b"new"

    transport.rename("in/a.csv", "quarantine/2026/a.csv")  # "directories" need no creating
    assert sorted(s3_bucket.keys(f"{PREFIX}/")) == [f"{PREFIX}/done/a.csv", f"{PREFIX}/quarantine/2026/a.csv"]


def test_rename_leaves_an_object_overwritten_since_listing(transport: S3Transport, s3_bucket: S3Bucket) -> None:
    s3_bucket.put(f"{PREFIX}/in/a.csv", "first delivery")
    (remote,) = transport.list_files("in")
    s3_bucket.put(f"{PREFIX}/in/a.csv", "second delivery")

    with pytest.raises(FileVanishedError, match="changed since it was listed"):
        transport.rename("in/a.csv", "in/a.csv.done", if_match=remote.etag)
    assert s3_bucket.keys(f"{PREFIX}/") == [f"{PREFIX}/in/a.csv"]


def test_delete(transport: S3Transport, s3_bucket: S3Bucket) -> None:
    etag = s3_bucket.put(f"{PREFIX}/in/a.csv", "x")
    s3_bucket.put(f"{PREFIX}/in/b.csv", "y")

    transport.delete("in/missing.csv")  # missing is fine
    transport.delete("in/missing.csv", if_match="0123456789abcdef")
    with pytest.raises(FileVanishedError, match="not deleted"):
        transport.delete("in/b.csv", if_match=etag)  # b's ETag differs: it changed since that listing
    transport.delete("in/a.csv", if_match=f'"{etag}"')
    transport.delete("in/a.csv")

    assert s3_bucket.keys(f"{PREFIX}/") == [f"{PREFIX}/in/b.csv"]


def test_paths_stay_inside_the_prefix(s3_bucket: S3Bucket) -> None:
    assert S3Transport(None, s3_bucket.location).uri == f"s3://{s3_bucket.name}"
    assert S3Transport(None, s3_bucket.location_with("/a//b/")).uri == f"s3://{s3_bucket.name}/a/b"
    transport = S3Transport(plain_client(s3_bucket.location), s3_bucket.location_with("a/b"))
    with pytest.raises(TransportError, match=r"'\.\.' is not allowed"):
        transport.list_files("../c")
    with pytest.raises(TransportError, match=r"'\.\.' is not allowed"):
        transport.exists("in/../../x")


# ---------------------------------------------------------------- credentials, permissions, failures


def test_from_environment_reads_the_named_variables(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_bucket.put("in/a.csv", "x")
    with S3Transport.from_environment(s3_bucket.location) as transport:
        assert [f.path for f in transport.list_files("in")] == ["in/a.csv"]

    monkeypatch.delenv(SECRET_KEY_ENV)
    with pytest.raises(TransportError, match=f"environment variable {SECRET_KEY_ENV} .* is not set"):
        S3Transport.from_environment(s3_bucket.location)
    with pytest.raises(TransportError, match="needs its secret access key"):
        s3_client_for(s3_bucket.location, "AKIAONLYTHEID", None, None)


def test_permission_and_credential_errors_are_terminal_and_say_what_is_needed(
    s3_bucket: S3Bucket, s3_iam: S3Iam, tmp_path: Path
) -> None:
    location = s3_bucket.location_with(PREFIX)
    s3_bucket.put(f"{PREFIX}/in/a.csv", "id\n1\n")
    remote = S3Transport(plain_client(location), location).list_files("in")[0]
    local = tmp_path / "out.csv"
    local.write_text("id\n1\n")
    list_only = s3_iam.user(["s3:ListBucket"], s3_bucket.name)
    no_delete = s3_iam.user(["s3:ListBucket", "s3:GetObject", "s3:PutObject"], s3_bucket.name)
    everything = s3_iam.user(["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"], s3_bucket.name)
    s3_iam.enforce()

    def transport(key_id: str, secret: str) -> S3Transport:
        return S3Transport(s3_client_for(location, key_id, secret, None), location)

    def terminal(call: Callable[[], object], *expected: str, secret: str) -> str:
        with pytest.raises(TransportError) as caught:
            call()
        error = caught.value
        assert not isinstance(error, (TransientError, FileVanishedError)), error
        message = str(error)
        for text in expected:
            assert text in message, message
        assert secret not in message
        return message

    reader = transport(*list_only)
    terminal(lambda: reader.download(remote, tmp_path / "a.csv"), "download", "s3:GetObject", s3_bucket.name, "AccessDenied", secret=list_only[1])
    terminal(lambda: reader.upload(local, "out/x.csv"), "upload", "s3:PutObject", s3_bucket.name, secret=list_only[1])
    assert leftovers(tmp_path) == ["out.csv"]

    # a rename cut short between copy and delete leaves both objects ...
    mover = transport(*no_delete)
    terminal(lambda: mover.rename("in/a.csv", "in/a.csv.done"), "s3:DeleteObject", "AccessDenied", secret=no_delete[1])
    # ... and a retry with enough rights recognises its own copy and finishes the move
    transport(*everything).rename("in/a.csv", "in/a.csv.done")
    s3_iam.server.set_auth(False)
    assert s3_bucket.keys(f"{PREFIX}/") == [f"{PREFIX}/in/a.csv.done"]
    s3_iam.enforce()

    unknown = transport("AKIAUNKNOWNKEY000000", "whatever-secret-value")
    message = terminal(lambda: unknown.download(remote, tmp_path / "a.csv"), "InvalidAccessKeyId", ACCESS_KEY_ENV, secret="whatever-secret-value")
    assert "AKIAUNKNOWNKEY000000" not in message
    wrong_secret = transport(everything[0], "not-the-right-secret")
    terminal(lambda: wrong_secret.exists("in/a.csv.done"), secret="not-the-right-secret")
    terminal(lambda: wrong_secret.delete("in/a.csv.done"), "SignatureDoesNotMatch", SECRET_KEY_ENV, secret="not-the-right-secret")


def test_missing_bucket_is_terminal(s3_bucket: S3Bucket) -> None:
    location = s3_bucket.location.model_copy(update={"bucket": "cdp-no-such-bucket"})
    transport = S3Transport(dagster_client(location), location)
    with pytest.raises(TransportError, match="'cdp-no-such-bucket' does not exist") as caught:
        transport.list_files("in")
    assert not isinstance(caught.value, TransientError)


def test_unreachable_endpoint_is_transient(s3_bucket: S3Bucket) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    location = s3_bucket.location.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}"})
    transport = S3Transport(dagster_client(location, max_attempts=1), location)
    with pytest.raises(TransientTransportError, match="cannot reach http://127.0.0.1"):
        transport.list_files("in")


# ---------------------------------------------------------------- classifier (pure logic)


def _client_error(code: str, status: int, operation: str = "GetObject", message: str = "msg") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


def _classify(exc: BaseException, permission: str = "s3:GetObject") -> TransportError:
    return classify_s3_error(
        exc,
        bucket="acme-drop",
        operation="download",
        target="s3://acme-drop/in/a.csv",
        permission=permission,
        credentials="the key in environment variables ACME_KEY_ID / ACME_SECRET",
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [("SlowDown", 503), ("ServiceUnavailable", 503), ("InternalError", 500), ("RequestTimeout", 400), ("Throttling", 400), ("", 502)],
)
def test_classifier_transient(code: str, status: int) -> None:
    assert isinstance(_classify(_client_error(code, status)), TransientTransportError)


@pytest.mark.parametrize(
    ("code", "status", "operation", "permission", "expected"),
    [
        ("AccessDenied", 403, "ListObjectsV2", "s3:ListBucket", "need s3:ListBucket on bucket 'acme-drop'"),
        ("403", 403, "HeadObject", "s3:GetObject", "403 instead of 404"),
        ("InvalidAccessKeyId", 403, "GetObject", "s3:GetObject", "ACME_KEY_ID / ACME_SECRET"),
        ("SignatureDoesNotMatch", 403, "GetObject", "s3:GetObject", "secret access key does not belong"),
        ("NoSuchBucket", 404, "ListObjectsV2", "s3:ListBucket", "'acme-drop' does not exist"),
        ("ExpiredToken", 400, "GetObject", "s3:GetObject", "expired"),
        ("PermanentRedirect", 301, "ListObjectsV2", "s3:ListBucket", "another region"),
        ("NotImplemented", 501, "DeleteObject", "s3:DeleteObject", "NotImplemented"),
        ("InvalidObjectState", 403, "GetObject", "s3:GetObject", "must be restored"),
    ],
)
def test_classifier_terminal(code: str, status: int, operation: str, permission: str, expected: str) -> None:
    error = _classify(_client_error(code, status, operation), permission)
    assert type(error) is TransportError
    assert expected in str(error)
    assert "download of s3://acme-drop/in/a.csv" in str(error)


def test_classifier_vanished_and_wrapped_errors() -> None:
    assert isinstance(_classify(_client_error("PreconditionFailed", 412)), FileVanishedError)
    assert isinstance(_classify(_client_error("NoSuchKey", 404)), FileVanishedError)
    # boto3's upload_file wraps the ClientError in S3UploadFailedError; the cause is found in the context
    try:
        try:
            raise _client_error("AccessDenied", 403, "PutObject")
        except ClientError as inner:
            raise S3UploadFailedError(f"Failed to upload: {inner}")  # noqa: B904 - as boto3 does: only the context
    except S3UploadFailedError as outer:
        error = _classify(outer, "s3:PutObject")
    assert type(error) is TransportError and "need s3:PutObject" in str(error)
    assert isinstance(_classify(EndpointConnectionError(endpoint_url="http://127.0.0.1:9")), TransientTransportError)
    no_credentials = _classify(NoCredentialsError())
    assert type(no_credentials) is TransportError and "ACME_KEY_ID" in str(no_credentials)
