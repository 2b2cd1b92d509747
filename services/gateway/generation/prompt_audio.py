"""A prediction's ``audio_prompt``, and the files uploaded for it (FileService, /v1/files).

``audio_prompt`` may be:

* the ``urls.get`` of a file the caller uploaded to /v1/files (the
  ``replicate`` client uploads a local file there by itself), read from the
  database, never fetched over HTTP;
* a ``data:`` URI (base64);
* ``sample:<id>``, a voice sample in the caller's library;
* an http(s) URL that starts with one of GATEWAY_PREDICTION_URL_ALLOW_LIST's
  prefixes, fetched without following redirects; any other URL is refused
  (the gateway fetches nothing a user names unless the operator allowed it).

The audio becomes a voice sample of the caller (collection PROMPT_COLLECTION),
once per distinct content: the library decodes and normalizes it and its
speech recognition writes the transcript Dia needs; the generation then
clones it as S1, cut to max_audio_prompt_seconds like any sample.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from urllib.parse import unquote_to_bytes

import aiohttp
import grpc
from google.api import httpbody_pb2

from runtime import clients, config
from runtime.database import connection
from runtime.errors import ApiError, invalid_parameter, not_found
from services.gateway.config import MAX_FILE_BYTES, PREDICTION_URL_ALLOW_LIST, PUBLIC_URL
from services.gateway.generation import prompt, webhooks
from services.gateway.generation.metadata import parse_metadata
from voice.gateway.v1 import predictions_pb2, predictions_pb2_grpc
from voice.library.v1 import library_pb2, library_pb2_grpc

PARAM = "audio_prompt"
PROMPT_COLLECTION = "prediction audio prompts"
FILE_ID_PREFIX = "file_"
_SAMPLE = re.compile(r"sample:([0-9]{1,18})")
_DATA_URI = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),(.*)", re.DOTALL)
_OWN_FILE = re.compile(r"/v1/files/(" + FILE_ID_PREFIX + r"[0-9a-f]{24})/content")


def allow_list() -> list[str]:
    return [prefix.strip() for prefix in PREDICTION_URL_ALLOW_LIST.value.split(",") if prefix.strip()]


def too_large(what: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
        f"{what} is larger than the limit of {MAX_FILE_BYTES.value} bytes",
        param=PARAM,
    )


async def speakers_of(generations, account_id: int, given: predictions_pb2.PredictionInput) -> dict[str, int]:
    """The speakers to clone for a prediction's input: {} or {"S1": the sample of its audio_prompt}."""
    reference = given.audio_prompt.strip()
    if not reference:
        return {}
    sample = _SAMPLE.fullmatch(reference)
    if sample:
        return {"S1": int(sample.group(1))}  # fetch_samples checks that it is the caller's
    audio, content_type = await _audio(generations.pool(), account_id, reference)
    return {"S1": await _as_sample(generations, account_id, audio, content_type)}


async def samples_of(generations, account_id: int, speakers: dict[str, int]) -> list[prompt.Sample]:
    return await prompt.fetch_samples(generations.library, account_id, speakers) if speakers else []


async def _audio(pool, account_id: int, reference: str) -> tuple[bytes, str]:
    if reference.startswith("data:"):
        return _data_uri(reference)
    own = _OWN_FILE.search(reference)
    if own and reference.startswith((PUBLIC_URL.value.rstrip("/") + "/", "/v1/")):
        row = await _file_row(pool, account_id, own.group(1), with_content=True)
        return row["content"], row["content_type"]
    if reference.startswith(("http://", "https://")):
        if not webhooks.is_allowed(reference, allow_list()):
            raise invalid_parameter(
                PARAM,
                "audio_prompt is a URL this gateway may not fetch (only prefixes of GATEWAY_PREDICTION_URL_ALLOW_LIST "
                "are); upload the file to /v1/files and pass its urls.get, or send a data: URI",
            )
        return await _fetch(reference)
    raise invalid_parameter(
        PARAM,
        "audio_prompt must be the urls.get of a file uploaded to /v1/files, a data: URI, \"sample:<id>\" of one of "
        "your voice samples, or an allowed http(s) URL",
    )


def _data_uri(reference: str) -> tuple[bytes, str]:
    match = _DATA_URI.fullmatch(reference)
    if match is None:
        raise invalid_parameter(PARAM, "audio_prompt is not a valid data: URI (data:<type>;base64,<data>)")
    content_type, options, data = match.group(1) or "application/octet-stream", match.group(2), match.group(3)
    if len(data) > MAX_FILE_BYTES.value * 4 // 3 + 4:
        raise too_large("the audio_prompt data: URI")
    try:
        audio = base64.b64decode(data, validate=True) if ";base64" in options else unquote_to_bytes(data)
    except (binascii.Error, ValueError):
        raise invalid_parameter(PARAM, "audio_prompt's data: URI is not valid base64") from None
    if not audio:
        raise invalid_parameter(PARAM, "audio_prompt's data: URI holds no audio")
    return audio, content_type


async def _fetch(url: str) -> tuple[bytes, str]:
    limit = MAX_FILE_BYTES.value
    timeout = aiohttp.ClientTimeout(total=config.UPSTREAM_TIMEOUT_SECONDS.value)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise invalid_parameter(PARAM, f"fetching audio_prompt answered HTTP {response.status}")
                data = await response.content.read(limit + 1)
                if len(data) > limit:
                    raise too_large("the audio_prompt URL's file")
                return data, response.content_type
    except (aiohttp.ClientError, TimeoutError) as error:
        raise invalid_parameter(PARAM, f"audio_prompt could not be fetched: {type(error).__name__}") from None


async def _as_sample(generations, account_id: int, audio: bytes, content_type: str) -> int:
    """The caller's voice sample of this audio: made (and transcribed) the first time it is used."""
    digest = hashlib.sha256(audio).hexdigest()
    metadata = ((clients.ACCOUNT_ID_METADATA, str(account_id)),)
    stub = library_pb2_grpc.LibraryServiceStub(generations.library)
    async with connection(generations.pool()) as db:
        known = await db.fetchval(
            "SELECT sample_id FROM prediction_prompt_samples WHERE account_id = $1 AND sha256 = $2", account_id, digest
        )
    if known is not None:
        try:
            await stub.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=known), metadata=metadata)
            return known
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # deleted by its owner: made again below
                raise ApiError.from_rpc_error(error) from None
    try:
        created = await stub.CreateVoiceSample(
            library_pb2.CreateVoiceSampleRequest(
                audio=httpbody_pb2.HttpBody(content_type=content_type, data=audio),
                speaker_name=f"audio_prompt {digest[:12]}",
                collection=PROMPT_COLLECTION,
            ),
            metadata=metadata,
        )
    except grpc.aio.AioRpcError as error:
        refusal = ApiError.from_rpc_error(error)
        if refusal.code == grpc.StatusCode.INVALID_ARGUMENT:
            refusal.param = f"input.{PARAM}"
        raise refusal from None
    sample_id = created.voice_sample.id
    async with connection(generations.pool()) as db:
        await db.execute(
            """INSERT INTO prediction_prompt_samples (account_id, sha256, sample_id) VALUES ($1, $2, $3)
               ON CONFLICT (account_id, sha256) DO UPDATE SET sample_id = excluded.sample_id""",
            account_id,
            digest,
            sample_id,
        )
    return sample_id


# --- /v1/files ----------------------------------------------------------------------

FILE_COLUMNS = "id, name, content_type, sha256, metadata, octet_length(content) AS size, create_time"


async def _file_row(pool, account_id: int, file_id: str, with_content: bool = False):
    columns = FILE_COLUMNS + (", content" if with_content else "")
    async with connection(pool) as db:
        row = await db.fetchrow(
            f"SELECT {columns} FROM prediction_files WHERE id = $1 AND account_id = $2", file_id, account_id
        )
    if row is None:
        raise not_found(f"there is no file {file_id[:100]}")
    return row


def to_file(row) -> predictions_pb2.File:
    base = PUBLIC_URL.value.rstrip("/")
    found = predictions_pb2.File(
        id=row["id"],
        name=row["name"],
        content_type=row["content_type"],
        size=row["size"],
        etag=f'"{row["sha256"][:32]}"',
        checksums={"sha256": row["sha256"]},
        urls=predictions_pb2.FileUrls(get=f"{base}/v1/files/{row['id']}/content"),
    )
    found.metadata.SetInParent()  # {} when empty: the client requires the member
    found.metadata.update(json.loads(row["metadata"]))
    found.created_at.FromDatetime(row["create_time"])
    return found


class Files(predictions_pb2_grpc.FileServiceServicer):
    def __init__(self, generations) -> None:
        self.generations = generations

    async def CreateFile(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        content = request.content.data
        if not content:
            raise invalid_parameter("content", "the file is empty: send it in the multipart part \"content\"")
        if len(content) > MAX_FILE_BYTES.value:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "REQUEST_TOO_LARGE",
                f"the file is larger than the limit of {MAX_FILE_BYTES.value} bytes",
                param="content",
            )
        metadata = parse_metadata(request.metadata)
        file_id = FILE_ID_PREFIX + secrets.token_hex(12)
        name = request.filename or file_id
        async with connection(self.generations.pool()) as db:
            await db.execute(
                """INSERT INTO prediction_files (id, account_id, name, content_type, sha256, metadata, content)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                file_id,
                account_id,
                name[:255],
                (request.content.content_type or "application/octet-stream")[:255],
                hashlib.sha256(content).hexdigest(),
                json.dumps(metadata),
                content,
            )
        row = await _file_row(self.generations.pool(), account_id, file_id)
        return predictions_pb2.CreateFileResponse(file=to_file(row))

    async def ListFiles(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        async with connection(self.generations.pool()) as db:
            rows = await db.fetch(
                f"SELECT {FILE_COLUMNS} FROM prediction_files WHERE account_id = $1 ORDER BY seq DESC LIMIT 100",
                account_id,
            )
        return predictions_pb2.ListFilesResponse(results=[to_file(row) for row in rows])

    async def GetFile(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        return predictions_pb2.GetFileResponse(file=to_file(await _file_row(self.generations.pool(), account_id, request.id)))

    async def GetFileContent(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        row = await _file_row(self.generations.pool(), account_id, request.id, with_content=True)
        return predictions_pb2.GetFileContentResponse(
            content=httpbody_pb2.HttpBody(content_type="application/octet-stream", data=row["content"])
        )

    async def DeleteFile(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        async with connection(self.generations.pool()) as db:
            deleted = await db.execute(
                "DELETE FROM prediction_files WHERE id = $1 AND account_id = $2", request.id, account_id
            )
        if deleted.endswith(" 0"):
            raise not_found(f"there is no file {request.id[:100]}")
        return predictions_pb2.DeleteFileResponse()

