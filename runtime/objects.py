"""Object storage (S3) for the bytes of audio, PostgreSQL keeping what they are.

An :class:`ObjectStore` is one service process's client of one bucket of an
S3-compatible store: the embedded SeaweedFS that `make run` starts
(tools/seaweedfs.py), or any S3 named by ``S3_ENDPOINT_URL`` (AWS itself by
its region when that is unset in a service). It is built on aiobotocore
(botocore's S3 client on aiohttp; bench/object_store_bench.py measures it
against obstore, README "Benchmarks"): every call is async, a download
streams in pieces without holding the object, a streamed upload holds one
part (``S3_MULTIPART_PART_BYTES``) at a time. A whole object read from an
endpoint with keys (:meth:`ObjectStore.get`: a voice sample for a prompt) is
a GET on aiohttp signed by botocore's signer, at a third of botocore's CPU.

Errors are the mesh's: a store that cannot be reached, times out, answers
5xx or refuses our credentials is :func:`storage_unavailable` (UNAVAILABLE,
``STORAGE_UNAVAILABLE``: HTTP 503 with Retry-After), its cause logged, never
shown; a key that is not there is :class:`ObjectNotFound` (NOT_FOUND), which
a caller turns into its own 404 or 410; a range past the end is
``INVALID_RANGE`` (OUT_OF_RANGE, HTTP 400).

Keys are the caller's: non-empty, at most 1024 bytes of UTF-8, no ``..``
segment and no leading ``/`` (S3 allows more; SeaweedFS does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import grpc
import tenacity
import yarl
from aiobotocore.session import AioSession
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from runtime import config
from runtime.errors import ApiError

log = logging.getLogger("runtime.objects")

MIB = 1024 * 1024
# S3's own bounds: a part of a multipart upload (all but the last) is 5 MiB to 5 GiB;
# a presigned URL (SigV4) lives at most 7 days.
MIN_PART_BYTES, MAX_PART_BYTES = 5 * MIB, 5 * 1024 * MIB
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600

S3_ENDPOINT_URL = config.setting(
    "S3_ENDPOINT_URL",
    None,
    "S3 endpoint of the object store that holds audio (`http://host:port` of SeaweedFS, MinIO..., or "
    "`https://s3.<region>.amazonaws.com`); `make run` starts an embedded SeaweedFS and sets it when unset. "
    "Unset in a service: AWS S3 of S3_REGION",
)
S3_PUBLIC_ENDPOINT_URL = config.setting(
    "S3_PUBLIC_ENDPOINT_URL",
    None,
    "S3 endpoint as users' browsers reach it, the start of presigned URLs (their signature covers the host); "
    "unset: S3_ENDPOINT_URL",
)
S3_BUCKET = config.setting("S3_BUCKET", "voicemesh", "bucket that holds the audio (`make run` creates it)")
S3_REGION = config.setting("S3_REGION", "us-east-1", "region of the bucket, which signatures name")
S3_ACCESS_KEY_ID = config.setting(
    "S3_ACCESS_KEY_ID",
    None,
    "access key of the object store; unset: botocore's own chain (AWS_ACCESS_KEY_ID, a web identity, an "
    "instance profile), or, for the SeaweedFS `make run` starts, one made on first use and kept in its data folder",
)
S3_SECRET_ACCESS_KEY = config.setting(
    "S3_SECRET_ACCESS_KEY", None, "secret key of S3_ACCESS_KEY_ID (set both or neither)", secret=True
)
S3_ADDRESSING_STYLE = config.setting(
    "S3_ADDRESSING_STYLE",
    "path",
    "how requests name the bucket: path (`endpoint/bucket/key`, what SeaweedFS and MinIO serve) or virtual "
    "(`bucket.endpoint/key`)",
    config.one_of("path", "virtual"),
)
S3_TIMEOUT_SECONDS = config.setting(
    "S3_TIMEOUT_SECONDS",
    10.0,
    "longest wait for a connection to the object store, and for each next piece of its answer; past it the "
    "try fails (and is retried, S3_ATTEMPTS)",
    config.positive(float),
)
S3_ATTEMPTS = config.setting(
    "S3_ATTEMPTS",
    3,
    "tries of one object-store request that failed to connect, timed out, or was answered 5xx or throttled, "
    "with random pauses doubling from 1 s (at most 20 s); then the caller gets 503 storage_unavailable",
    config.between(1, 10, int),
)
S3_MAX_CONNECTIONS = config.setting(
    "S3_MAX_CONNECTIONS",
    10,
    "most connections to the object store one service process holds; more requests at once wait for one",
    config.at_least(1),
)
S3_MULTIPART_PART_BYTES = config.setting(
    "S3_MULTIPART_PART_BYTES",
    MIN_PART_BYTES,
    "part size of a streamed upload (5 MiB, S3's least, to 5 GiB): it holds one part in memory at a time (the "
    "library's voice-sample uploads, one each); one that ends within its first part is stored with a single PUT",
    config.between(MIN_PART_BYTES, MAX_PART_BYTES, int),
)
S3_PRESIGNED_URL_SECONDS = config.setting(
    "S3_PRESIGNED_URL_SECONDS",
    900,
    "how long a presigned download URL works unless its caller says otherwise (1 s to 7 days)",
    config.between(1, MAX_PRESIGNED_SECONDS, int),
)

S3_CREATE_BUCKET = config.setting(
    "S3_CREATE_BUCKET",
    False,
    "true: a service that finds the bucket missing makes it (the development overlay's SeaweedFS starts empty); "
    "false: a missing bucket is the operator's to make, and the service is not ready until it exists",
    config.boolean,
)
S3_ORPHAN_GRACE_SECONDS = config.setting(
    "S3_ORPHAN_GRACE_SECONDS",
    3600.0,
    "age past which an object of audio that no database row names (its service crashed between storing it and "
    "committing the row, or lost the store while deleting it) is deleted by the sweep; younger ones may be an "
    "upload still under way",
    config.between(0, 30 * 24 * 3600),
)
S3_SWEEP_SECONDS = config.setting(
    "S3_SWEEP_SECONDS",
    600.0,
    "how often the gateway and the library each look through their objects for those no row names "
    "(S3_ORPHAN_GRACE_SECONDS), and the gateway for generated audio past GATEWAY_AUDIO_RETENTION_SECONDS",
    config.between(1, 7 * 24 * 3600),
)

# Retry-After of STORAGE_UNAVAILABLE: a restarted store answers within seconds.
UNAVAILABLE_RETRY_SECONDS = 2.0
# Pieces of a streamed download, unless the caller asks for others.
DEFAULT_PIECE_BYTES = 64 * 1024
MAX_KEY_BYTES = 1024

# S3 error codes that mean "not there".
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
# The store is busy or broken for a while: worth a retry later (they are also retried at once, S3_ATTEMPTS).
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}

# What a lost or refused connection raises: botocore's connection errors and timeouts,
# aiohttp's while a body streams, the socket's own.
CONNECTION_ERRORS = (BotoConnectionError, HTTPClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError)
# No credentials to sign with (none set, and none in botocore's chain): the operator's to fix.
CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


def storage_unavailable(retry: bool = True) -> ApiError:
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        "the audio store is unavailable; try again shortly",
        retry_after=UNAVAILABLE_RETRY_SECONDS if retry else None,
    )


class ObjectNotFound(ApiError):
    """The key is not in the bucket: the caller's 404 (never stored) or 410 (gone)."""

    def __init__(self, key: str) -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "the stored audio was not found")
        self.key = key


def invalid_range(key: str) -> ApiError:
    return ApiError(grpc.StatusCode.OUT_OF_RANGE, "INVALID_RANGE", "the range starts past the end of the audio")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime.datetime | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class StoreSettings:
    """Where the store is and how to talk to it (the S3_* settings, read from an environment)."""

    endpoint_url: str | None = None
    public_endpoint_url: str | None = None
    bucket: str = S3_BUCKET.default
    region: str = S3_REGION.default
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: str = S3_ADDRESSING_STYLE.default
    timeout_seconds: float = S3_TIMEOUT_SECONDS.default
    attempts: int = S3_ATTEMPTS.default
    max_connections: int = S3_MAX_CONNECTIONS.default
    part_bytes: int = S3_MULTIPART_PART_BYTES.default
    presigned_url_seconds: int = S3_PRESIGNED_URL_SECONDS.default
    create_bucket: bool = S3_CREATE_BUCKET.default

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StoreSettings:
        env = os.environ if environ is None else environ
        key, secret = S3_ACCESS_KEY_ID.value_in(env), S3_SECRET_ACCESS_KEY.value_in(env)
        if bool(key) != bool(secret):
            raise SystemExit("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY are set together or not at all")
        return cls(
            endpoint_url=S3_ENDPOINT_URL.value_in(env),
            public_endpoint_url=S3_PUBLIC_ENDPOINT_URL.value_in(env),
            bucket=S3_BUCKET.value_in(env),
            region=S3_REGION.value_in(env),
            access_key_id=key,
            secret_access_key=secret,
            addressing_style=S3_ADDRESSING_STYLE.value_in(env),
            timeout_seconds=S3_TIMEOUT_SECONDS.value_in(env),
            attempts=S3_ATTEMPTS.value_in(env),
            max_connections=S3_MAX_CONNECTIONS.value_in(env),
            part_bytes=S3_MULTIPART_PART_BYTES.value_in(env),
            presigned_url_seconds=S3_PRESIGNED_URL_SECONDS.value_in(env),
            create_bucket=S3_CREATE_BUCKET.value_in(env),
        )

    def environment(self) -> dict[str, str]:
        """The S3_* variables that give a service these settings (what `make run` hands on)."""
        env = {S3_BUCKET.name: self.bucket, S3_REGION.name: self.region}
        for setting, value in (
            (S3_ENDPOINT_URL, self.endpoint_url),
            (S3_PUBLIC_ENDPOINT_URL, self.public_endpoint_url),
            (S3_ACCESS_KEY_ID, self.access_key_id),
            (S3_SECRET_ACCESS_KEY, self.secret_access_key),
        ):
            if value:
                env[setting.name] = value
        return env


def check_key(key: str) -> str:
    if not key or len(key.encode()) > MAX_KEY_BYTES or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"not an object key of ours: {key!r}")
    return key


class Download:
    """An object (or a range of it) as it arrives: iterate for its pieces, or read() it whole.

    Made by :meth:`ObjectStore.download`, which releases the connection on leaving."""

    def __init__(self, key: str, answer: dict[str, Any], piece_bytes: int) -> None:
        self.key = key
        self._body = answer["Body"]
        self._piece_bytes = piece_bytes
        self.length: int = answer["ContentLength"]  # bytes of this answer
        self.content_type: str | None = answer.get("ContentType")
        self.etag: str = answer.get("ETag", "")
        # Of a range: "bytes 0-99/12345"; the object's whole size is after the slash.
        content_range = answer.get("ContentRange")
        self.size: int = int(content_range.rsplit("/", 1)[1]) if content_range else self.length
        self.start: int = int(content_range.split()[1].split("-")[0]) if content_range else 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _errors(self.key):
            async for piece in self._body.iter_chunks(self._piece_bytes):
                yield piece

    async def read(self) -> bytes:
        with _errors(self.key):
            return await self._body.read()


class _Transient(Exception):
    """A signed GET that failed in a way worth trying again (see :meth:`ObjectStore.get`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _error_code(body: bytes) -> str:
    """The <Code> of an S3 error document ("" if none)."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    return body[start + 6 : end].decode(errors="replace") if 0 <= start < end else ""


@contextlib.contextmanager
def _errors(key: str | None = None):
    """The store's failures as the mesh's ApiErrors (see the module's doc)."""
    try:
        yield
    except ApiError:
        raise
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if key is not None and code in _NOT_FOUND_CODES:
            raise ObjectNotFound(key) from error
        if code == "InvalidRange" and key is not None:
            raise invalid_range(key) from error
        transient = code in _TRANSIENT_CODES or status >= 500
        # A missing bucket, refused credentials, a denied action: the operator's to fix.
        log.log(
            logging.WARNING if transient else logging.ERROR,
            "object store refused a request",
            extra={"s3_code": code, "http_status": status, "operation": error.operation_name},
        )
        raise storage_unavailable(retry=transient) from error
    except CONNECTION_ERRORS as error:
        log.warning("object store unreachable", extra={"error": type(error).__name__})
        raise storage_unavailable() from error
    except CREDENTIAL_ERRORS as error:
        log.error("no credentials for the object store", extra={"error": type(error).__name__})
        raise storage_unavailable(retry=False) from error


class ObjectStore:
    """One bucket of an S3 store. Connections are made on first use and kept
    (S3_MAX_CONNECTIONS); :meth:`close` (or ``async with``) lets them go."""

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings.from_environment()
        self.bucket = self.settings.bucket
        self._session = AioSession()
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._signer: Any = None  # a client on the public endpoint, for presigned URLs
        self._http: aiohttp.ClientSession | None = None  # whole-object GETs signed here (see :meth:`get`)
        self._get_signer: S3SigV4Auth | None = None  # signs those GETs
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def _config(self) -> Config:
        settings = self.settings
        return Config(
            region_name=settings.region,
            signature_version="s3v4",
            s3={"addressing_style": settings.addressing_style},
            connect_timeout=settings.timeout_seconds,
            read_timeout=settings.timeout_seconds,
            retries={"mode": "standard", "max_attempts": settings.attempts},
            max_pool_connections=settings.max_connections,
            # No CRC32 of every body on top of the signature (S3 asks for neither, SeaweedFS checks neither).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    def _client_context(self, endpoint_url: str | None):
        settings = self.settings
        return self._session.create_client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=self._config(),
        )

    async def _connect(self) -> Any:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    with _errors():
                        self._client = await self._stack.enter_async_context(
                            self._client_context(self.settings.endpoint_url)
                        )
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = self._signer = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- The bucket ---------------------------------------------------------

    async def create_bucket(self) -> bool:
        """Make the bucket unless it exists; whether it was made now."""
        client = await self._connect()
        with _errors():
            try:
                await client.head_bucket(Bucket=self.bucket)
                return False
            except ClientError as error:
                if str(error.response.get("Error", {}).get("Code")) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                    raise
            arguments: dict[str, Any] = {"Bucket": self.bucket}
            if self.settings.region != "us-east-1":  # AWS refuses the constraint in its default region
                arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
            try:
                await client.create_bucket(**arguments)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
                    return False  # made meanwhile, by another replica
                raise
            return True

    async def is_reachable(self) -> bool:
        """Readiness probe: the bucket answers, with our credentials (made first if it is missing and
        S3_CREATE_BUCKET says to)."""
        try:
            client = await self._connect()
            with _errors():
                try:
                    await client.head_bucket(Bucket=self.bucket)
                except ClientError as error:
                    missing = str(error.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES | {"NoSuchBucket"}
                    if not (missing and self.settings.create_bucket):
                        raise
                    if await self.create_bucket():
                        log.info("made the bucket", extra={"bucket": self.bucket})
            return True
        except ApiError:
            return False

    # --- Writing ------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Store `data` whole under `key` (one PUT), replacing what was there."""
        client = await self._connect()
        arguments = {"Bucket": self.bucket, "Key": check_key(key), "Body": data}
        if content_type:
            arguments["ContentType"] = content_type
        with _errors(key):
            answer = await client.put_object(**arguments)
        return ObjectInfo(key, len(data), answer.get("ETag", ""), content_type=content_type)

    async def put_stream(
        self, key: str, pieces: AsyncIterable[bytes | memoryview], content_type: str | None = None
    ) -> ObjectInfo:
        """Store what `pieces` yield under `key`, holding one part (S3_MULTIPART_PART_BYTES) at a
        time: a multipart upload once there is more than one part, else a single PUT. The object
        appears whole when the last piece is stored, or not at all: a failure (or cancellation)
        in the middle aborts the upload and nothing is left behind."""
        check_key(key)
        part_bytes = self.settings.part_bytes
        held: list[bytes] = []
        held_bytes = total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        client = await self._connect()
        extra = {"ContentType": content_type} if content_type else {}

        async def send_part() -> None:
            nonlocal held_bytes
            data = b"".join(held)
            held.clear()
            held_bytes = 0
            number = len(parts) + 1
            with _errors(key):
                answer = await client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            async for piece in pieces:
                if not piece:
                    continue
                # Immutable pieces are held as they are (the join below is their one copy); a buffer its
                # producer may reuse is copied.
                readonly = isinstance(piece, bytes) or (isinstance(piece, memoryview) and piece.readonly)
                held.append(piece if readonly else bytes(piece))
                held_bytes += len(piece)
                total += len(piece)
                if held_bytes >= part_bytes:
                    if upload_id is None:
                        with _errors(key):
                            upload = await client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
                        upload_id = upload["UploadId"]
                    await send_part()
            if upload_id is None:
                return await self.put(key, b"".join(held), content_type)
            if held:
                await send_part()
            with _errors(key):
                answer = await client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            upload_id = None
            return ObjectInfo(key, total, answer.get("ETag", ""), content_type=content_type)
        finally:
            if upload_id is not None:
                # Shielded: a cancelled caller still leaves no parts behind.
                await asyncio.shield(self._abort(key, upload_id))

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, *CONNECTION_ERRORS) as error:
            # Left for the bucket's lifecycle rule (or the next sweep) to clear.
            log.warning("could not abort a multipart upload", extra={"key": key, "error": type(error).__name__})

    async def delete(self, key: str) -> None:
        """Remove `key`; one that is not there is no error (so a retry is safe)."""
        client = await self._connect()
        with _errors():
            await client.delete_object(Bucket=self.bucket, Key=check_key(key))

    async def delete_all(self, keys: Iterable[str]) -> int:
        """Remove every key (at most S3_MAX_CONNECTIONS at once); how many were asked for. The first
        failure is raised once the others have been tried."""
        keys = list(keys)
        room = asyncio.Semaphore(self.settings.max_connections)

        async def one(key: str) -> None:
            async with room:
                await self.delete(key)

        results = await asyncio.gather(*(one(key) for key in keys), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(keys)

    @contextlib.asynccontextmanager
    async def keeping(self, keys: list[str]) -> AsyncIterator[None]:
        """Around storing `keys` and committing the row that names them: if the block does not end
        well (the store or the database failed, the caller went away), the objects are deleted again
        at once; those that cannot be (the store is down) are the sweep's (:meth:`sweep`)."""
        try:
            yield
        except BaseException:
            await asyncio.shield(self._forget(keys))
            raise

    async def _forget(self, keys: list[str]) -> None:
        try:
            await self.delete_all(keys)
        except ApiError:
            log.warning("objects that no row names are left to the sweep", extra={"count": len(keys)})

    async def let_go(self, keys: list[str], struck_off: Callable[[list[str]], Awaitable[None]]) -> None:
        """Delete the objects of rows just deleted, whose keys wait in a table of deletions until
        `struck_off(keys)` removes them; with the store down they wait there for :meth:`delete_pending`
        (the rows are gone either way, so the caller is not refused for it)."""
        keys = [key for key in keys if key]
        if not keys:
            return
        try:
            await self.delete_all(keys)
            await struck_off(keys)
        except ApiError as error:
            log.warning("objects of deleted rows wait for the sweep", extra={"count": len(keys), "type": error.reason.lower()})

    async def delete_pending(
        self, pending: Callable[[], Awaitable[list[str]]], struck_off: Callable[[list[str]], Awaitable[None]]
    ) -> int:
        """The sweep's half of :meth:`let_go`: delete the objects still waiting in the table of deletions
        (`pending()` a batch of them) and strike them off; how many."""
        waiting = await pending()
        if waiting:
            await self.delete_all(waiting)
            await struck_off(waiting)
        return len(waiting)

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix` (not empty); how many there were."""
        if not prefix:
            raise ValueError("delete_prefix needs a prefix: it would empty the bucket")
        deleted = 0
        batch: list[str] = []
        async for item in self.list_objects(prefix):
            batch.append(item.key)
            if len(batch) >= 1000:
                deleted += await self.delete_all(batch)
                batch = []
        return deleted + await self.delete_all(batch)

    async def sweep(
        self, prefix: str, unnamed: Callable[[list[str]], Awaitable[Iterable[str]]], older_than_seconds: float
    ) -> int:
        """Delete the objects under `prefix` older than `older_than_seconds` that no row names:
        `unnamed(keys)` says which of the keys no row names (asked a page at a time). Younger
        objects are left alone, as an upload whose row is not committed yet has one. How many
        were deleted."""
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than_seconds)
        deleted = 0
        page: list[str] = []

        async def settle() -> int:
            orphans = list(await unnamed(page)) if page else []
            if orphans:
                log.warning("deleting objects that no row names", extra={"prefix": prefix, "count": len(orphans)})
            return await self.delete_all(orphans)

        async for item in self.list_objects(prefix):
            if item.last_modified is not None and item.last_modified > cutoff:
                continue
            page.append(item.key)
            if len(page) >= 1000:
                deleted += await settle()
                page = []
        return deleted + await settle()

    # --- Reading ------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        client = await self._connect()
        with _errors(key):
            answer = await client.head_object(Bucket=self.bucket, Key=check_key(key))
        return ObjectInfo(
            key, answer["ContentLength"], answer.get("ETag", ""), answer.get("LastModified"), answer.get("ContentType")
        )

    async def get(self, key: str) -> bytes:
        """The whole object.

        On an endpoint named path-style with keys set (the embedded SeaweedFS, MinIO), a plain GET
        on aiohttp, signed by botocore's SigV4 signer alone: botocore's whole request machinery (its
        hooks, endpoint and response parsing) costs more CPU than the read of a voice sample itself,
        which a prompt-cache miss waits for. Same errors, retries and timeouts; elsewhere (AWS by
        its region, virtual-host addressing, credentials from botocore's chain) botocore's GET."""
        settings = self.settings
        if not (settings.endpoint_url and settings.addressing_style == "path" and settings.access_key_id):
            async with self.download(key) as download:
                return await download.read()
        # Encoded here as S3 wants it (every byte but A-Z a-z 0-9 - _ . ~ and /), sent and signed as is.
        path = urllib.parse.quote(f"/{self.bucket}/{check_key(key)}", safe="/-_.~")
        url = yarl.URL(settings.endpoint_url.rstrip("/") + path, encoded=True)
        # As botocore's "standard" retries: S3_ATTEMPTS tries, full-jitter pauses doubling up to 20 s.
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(settings.attempts),
            wait=tenacity.wait_random_exponential(multiplier=1, max=20),
            retry=tenacity.retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            return await retrying(self._signed_get, key, url)
        except _Transient as error:
            log.warning("object store unavailable", extra={"error": error.reason, "operation": "GetObject"})
            raise storage_unavailable() from error

    async def _signed_get(self, key: str, url: yarl.URL) -> bytes:
        if self._http is None:
            timeout = self.settings.timeout_seconds
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections),
                timeout=aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout),
                auto_decompress=False,
            )
        try:
            async with self._http.get(url, headers=self._signed_headers(url)) as answer:
                if answer.status == 200:
                    return await answer.read()
                body = await answer.read()
        except CONNECTION_ERRORS as error:
            raise _Transient(type(error).__name__) from error
        code = _error_code(body)
        if code in _NOT_FOUND_CODES or (answer.status == 404 and not code):  # not NoSuchBucket: ours to fix
            raise ObjectNotFound(key)
        if answer.status >= 500 or code in _TRANSIENT_CODES:
            raise _Transient(f"{answer.status} {code}")
        log.error("object store refused a request", extra={"s3_code": code, "http_status": answer.status, "operation": "GetObject"})
        raise storage_unavailable(retry=False)

    def _signed_headers(self, url: yarl.URL) -> dict[str, str]:
        """The headers that sign a GET of `url` (encoded, no query, no body), by botocore's own
        SigV4 signer for S3: its canonical request, not one of ours."""
        if self._get_signer is None:
            settings = self.settings
            credentials = Credentials(settings.access_key_id, settings.secret_access_key)
            self._get_signer = S3SigV4Auth(credentials, "s3", settings.region)
        request = AWSRequest(method="GET", url=str(url))
        self._get_signer.add_auth(request)
        return dict(request.headers.items())

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer where the object ends first)."""
        if start < 0 or length < 1:
            raise ValueError("a range starts at 0 or later and has at least one byte")
        async with self.download(key, start=start, end=start + length - 1) as download:
            return await download.read()

    @contextlib.asynccontextmanager
    async def download(
        self, key: str, *, start: int | None = None, end: int | None = None, piece_bytes: int = DEFAULT_PIECE_BYTES
    ) -> AsyncIterator[Download]:
        """The object (bytes `start` to `end`, both included, when given) as it arrives:
        ``async with store.download(key) as d: async for piece in d: ...``. Nothing is held
        but the piece being read; leaving the block releases the connection, read or not."""
        client = await self._connect()
        arguments = {"Bucket": self.bucket, "Key": check_key(key)}
        if start is not None or end is not None:
            arguments["Range"] = f"bytes={start or 0}-{'' if end is None else end}"
        with _errors(key):
            answer = await client.get_object(**arguments)
        body = answer["Body"]
        try:
            yield Download(key, answer, piece_bytes)
        finally:
            body.close()

    async def list_objects(self, prefix: str = "", page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, asked for a page
        (`page_size` keys, S3's most) at a time: for sweeping what no row names any more."""
        client = await self._connect()
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
        while True:
            with _errors():
                page = await client.list_objects_v2(**arguments)
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"], item["Size"], item.get("ETag", ""), item.get("LastModified"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            arguments["ContinuationToken"] = token

    async def presigned_url(self, key: str, expires_in: int | None = None) -> str:
        """A URL that GETs the object without credentials until it expires (S3_PRESIGNED_URL_SECONDS
        unless given), on S3_PUBLIC_ENDPOINT_URL (else S3_ENDPOINT_URL). Made here, without a request."""
        seconds = self.settings.presigned_url_seconds if expires_in is None else expires_in
        if not 1 <= seconds <= MAX_PRESIGNED_SECONDS:
            raise ValueError(f"a presigned URL lives 1 s to {MAX_PRESIGNED_SECONDS} s, not {seconds}")
        public = self.settings.public_endpoint_url
        if public and public != self.settings.endpoint_url:
            if self._signer is None:
                async with self._opening:
                    if self._signer is None:
                        self._signer = await self._stack.enter_async_context(self._client_context(public))
            signer = self._signer
        else:
            signer = await self._connect()
        with _errors(key):
            return await signer.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=seconds
            )
