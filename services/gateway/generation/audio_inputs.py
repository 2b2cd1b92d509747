"""Audio given by reference as a voice to clone, made a voice sample of the caller.

A reference may be:

* the URL of a file the caller uploaded to /v1/files (files.py; the
  ``replicate`` client uploads a local file there by itself), read from the
  store, never fetched over HTTP;
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
import re
from urllib.parse import unquote_to_bytes

import aiohttp
import grpc

from runtime import config
from runtime.errors import ApiError, invalid_parameter
from services.gateway.config import MAX_FILE_BYTES, PREDICTION_URL_ALLOW_LIST
from services.gateway.generation import files, webhooks
from services.gateway.generation.library import Library
from services.gateway.store.prompt_samples import PromptSamplesTable

PROMPT_COLLECTION = "prediction audio prompts"
_SAMPLE = re.compile(r"sample:([0-9]{1,18})")
_DATA_URI = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),(.*)", re.DOTALL)
_OWN_FILE = re.compile(r"/v1/files/(" + files.ID_PREFIX + r"[0-9a-f]{24})/content")


def allow_list() -> list[str]:
    return [prefix.strip() for prefix in PREDICTION_URL_ALLOW_LIST.value.split(",") if prefix.strip()]


class AudioInputs:
    """Audio references (see the module's docstring) → the caller's voice samples."""

    def __init__(self, library: Library, files_: files.Files, samples: PromptSamplesTable, public_url) -> None:
        self.library = library
        self.files = files_
        self.samples = samples
        self.public_url = public_url  # a callable: the setting's value

    async def sample_of(self, account_id: int, reference: str, param: str, key_id: int = 0) -> int:
        """The id of the caller's voice sample of the audio `reference` names; errors name `param`. A sample
        made of it is stored as usage of the key `key_id`."""
        sample = _SAMPLE.fullmatch(reference)
        if sample:
            return int(sample.group(1))  # the pipeline checks that it is the caller's
        audio, content_type = await self._audio(account_id, reference, param)
        return await self._as_sample(account_id, audio, content_type, param, key_id)

    async def _audio(self, account_id: int, reference: str, param: str) -> tuple[bytes, str]:
        if reference.startswith("data:"):
            return _data_uri(reference, param)
        own = _OWN_FILE.search(reference)
        if own and reference.startswith((self.public_url().rstrip("/") + "/", "/v1/")):
            row = await self.files.get(account_id, own.group(1))
            return await self.files.content(account_id, row["id"]), row["content_type"]
        if reference.startswith(("http://", "https://")):
            if not webhooks.is_allowed(reference, allow_list()):
                raise invalid_parameter(
                    param,
                    f"{param} is a URL this gateway may not fetch (only prefixes of GATEWAY_PREDICTION_URL_ALLOW_LIST "
                    "are); upload the file to /v1/files and pass its urls.get, or send a data: URI",
                )
            return await _fetch(reference, param)
        raise invalid_parameter(
            param,
            f"{param} must be the urls.get of a file uploaded to /v1/files, a data: URI, \"sample:<id>\" of one of "
            "your voice samples, or an allowed http(s) URL",
        )

    async def _as_sample(self, account_id: int, audio: bytes, content_type: str, param: str, key_id: int = 0) -> int:
        """The caller's voice sample of this audio: made (and transcribed) the first time it is used."""
        digest = hashlib.sha256(audio).hexdigest()
        known = await self.samples.sample_of(account_id, digest)
        if known is not None and await self.library.exists(account_id, known):
            return known  # else deleted by its owner: made again below
        try:
            created = await self.library.create(
                account_id, audio, content_type, f"audio_prompt {digest[:12]}", PROMPT_COLLECTION, key_id
            )
        except grpc.aio.AioRpcError as error:
            refusal = ApiError.from_rpc_error(error)
            if refusal.code == grpc.StatusCode.INVALID_ARGUMENT:
                refusal.param = param
            raise refusal from None
        await self.samples.remember(account_id, digest, created.id)
        return created.id


def _data_uri(reference: str, param: str) -> tuple[bytes, str]:
    match = _DATA_URI.fullmatch(reference)
    if match is None:
        raise invalid_parameter(param, f"{param} is not a valid data: URI (data:<type>;base64,<data>)")
    content_type, options, data = match.group(1) or "application/octet-stream", match.group(2), match.group(3)
    if len(data) > MAX_FILE_BYTES.value * 4 // 3 + 4:
        raise files.too_large(f"the {param} data: URI", param)
    try:
        audio = base64.b64decode(data, validate=True) if ";base64" in options else unquote_to_bytes(data)
    except (binascii.Error, ValueError):
        raise invalid_parameter(param, f"{param}'s data: URI is not valid base64") from None
    if not audio:
        raise invalid_parameter(param, f"{param}'s data: URI holds no audio")
    return audio, content_type


async def _fetch(url: str, param: str) -> tuple[bytes, str]:
    limit = MAX_FILE_BYTES.value
    timeout = aiohttp.ClientTimeout(total=config.UPSTREAM_TIMEOUT_SECONDS.value)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise invalid_parameter(param, f"fetching {param} answered HTTP {response.status}")
                data = await response.content.read(limit + 1)
                if len(data) > limit:
                    raise files.too_large(f"the {param} URL's file", param)
                return data, response.content_type
    except (aiohttp.ClientError, TimeoutError) as error:
        raise invalid_parameter(param, f"{param} could not be fetched: {type(error).__name__}") from None
