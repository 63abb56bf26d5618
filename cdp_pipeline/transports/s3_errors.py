"""What a failed S3 request means for the pipeline: retry later, the object changed, or fix the setup.

Pure logic, no I/O: boto3/botocore exceptions in, the pipeline's error types out. Messages quote
only the server's error code and message (which never contain the secret key) and name the
environment variables the credentials came from, never their values.
"""

from __future__ import annotations

from botocore.exceptions import (
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

from cdp_pipeline.errors import FileVanishedError, TransientTransportError, TransportError

__all__ = ["classify_s3_error", "error_code", "http_status"]

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


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


def http_status(error: ClientError) -> int:
    try:
        return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    except (TypeError, ValueError):
        return 0


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
        return TransportError(f"S3 {operation} of {target} failed: {type(exc).__name__}: {exc}")

    code = error_code(client_error)
    status = http_status(client_error)
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
