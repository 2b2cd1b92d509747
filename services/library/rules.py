"""The library's rules that need no database or network: who is calling,
which field values are acceptable, page tokens, and how an upload's format is
named. Kept apart from the servicer so they can be unit-tested directly.

Field rules (each refusal is INVALID_ARGUMENT / INVALID_PARAMETER naming the
field) are declared on the request messages in library.proto and applied by
runtime.fields; here the text is trimmed too:

* speaker_name: required, trimmed, at most LIBRARY_MAX_SPEAKER_NAME_CHARS,
  a name (no control, invisible format or line-breaking character);
* transcript: optional, trimmed, at most LIBRARY_MAX_TRANSCRIPT_CHARS;
* collection: optional, trimmed, at most LIBRARY_MAX_COLLECTION_CHARS, a name;
* visibility: private, unlisted or public (empty on upload means private);
* audio: required, at most LIBRARY_MAX_UPLOAD_BYTES (else REQUEST_TOO_LARGE),
  a limit in bytes checked here.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from dataclasses import dataclass
from typing import Iterable

import grpc

from runtime import callers, fields
from runtime.clients import ACCOUNT_ID_METADATA as ACCOUNT_HEADER
from runtime.errors import ApiError, invalid_argument, invalid_parameter
from services.library import config
from voice.library.v1 import library_pb2

_ACCOUNT_ID = re.compile(r"[0-9]{1,19}")
_MAX_BIGINT = 2**63 - 1  # ids are PostgreSQL bigints

_UPLOAD = library_pb2.CreateVoiceSampleRequest
_UPDATE = library_pb2.UpdateVoiceSampleRequest
VISIBILITIES = tuple(fields.rules(_UPLOAD.DESCRIPTOR.fields_by_name["visibility"]).one_of)
DEFAULT_VISIBILITY = fields.default(_UPLOAD.DESCRIPTOR.fields_by_name["visibility"])


def account_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> int:
    """The caller's account from the `x-account-id` metadata the gateway sets."""
    raw = dict(metadata or ()).get(ACCOUNT_HEADER, "")
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if _ACCOUNT_ID.fullmatch(raw.strip()) and 0 < int(raw) <= _MAX_BIGINT:
        return int(raw)
    raise ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHORIZED",
        f"no valid {ACCOUNT_HEADER}: the caller's account is unknown",
    )


def key_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> int:
    """The number of the caller's key from the `x-key-id` metadata the gateway sets, for usage;
    0 when there is none (a request the gateway makes for no key, or an older gateway)."""
    raw = dict(metadata or ()).get(callers.KEY_ID_METADATA, "")
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if _ACCOUNT_ID.fullmatch(raw.strip()) and 0 < int(raw) <= _MAX_BIGINT:
        return int(raw)
    return 0


def account_number(value: int) -> int:
    """An account id given in a request (the gateway's AccountDataService calls)."""
    if 0 < value <= _MAX_BIGINT:
        return value
    raise invalid_parameter("account_id", "account_id must be a positive account number")


def utc_day(value: str, param: str) -> datetime.date:
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise ValueError
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise invalid_parameter(param, f"{param} must be a date as YYYY-MM-DD") from None


# --- Field values --------------------------------------------------------


def _checked(name: str, value: str) -> str:
    """`value` checked against the upload's rules for field `name`, trimmed."""
    fields.check_field(_UPLOAD(**{name: value}), name)
    return value.strip()


def speaker_name(value: str) -> str:
    """Required: a sample without a name cannot be told apart in the library."""
    return _checked("speaker_name", value)


def transcript(value: str) -> str:
    return _checked("transcript", value)


def collection(value: str) -> str:
    return _checked("collection", value)


def visibility(value: str, *, empty_means_default: bool) -> str:
    """One of VISIBILITIES; on upload an empty value means private, in an update it is refused."""
    request = _UPLOAD(visibility=value) if empty_means_default else _UPDATE(visibility=value)
    fields.check_field(request, "visibility")
    return fields.value(request, "visibility")


def recognized_transcript(text: str) -> str:
    """A speech-recognition result, cut to the transcript limit rather than refused."""
    return text.strip()[: config.MAX_TRANSCRIPT_CHARS.value].strip()


def audio(data: bytes | memoryview) -> bytes | memoryview:
    """The uploaded audio, if there is some and not too much.

    Checked before any decoding, so an oversized upload costs nothing more.
    """
    limit = config.MAX_UPLOAD_BYTES.value
    if len(data) > limit:
        raise invalid_argument(
            "REQUEST_TOO_LARGE",
            f"the upload is {len(data)} bytes; voice samples may be at most {limit} bytes",
            "audio",
        )
    if not data:
        raise invalid_parameter("audio", "audio is required: send the recording as the request body")
    return data


# --- Page tokens ---------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """Where a page ended: the (create_time, id) of its last sample, newest first."""

    create_time: datetime.datetime
    id: int


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_TOKEN = re.compile(r"v1:(-?[0-9]{1,20}):([0-9]{1,19})")


def encode_page_token(position: Position) -> str:
    # Whole microseconds, PostgreSQL's precision, so the next page starts exactly after this one.
    micros = (position.create_time - _EPOCH) // datetime.timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"v1:{micros}:{position.id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> Position | None:
    """None for the first page; INVALID_PARAMETER for anything that is not our own token."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        match = _TOKEN.fullmatch(text)
        if match is None or int(match.group(2)) > _MAX_BIGINT:
            raise ValueError(text)
        create_time = _EPOCH + datetime.timedelta(microseconds=int(match.group(1)))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise invalid_parameter(
            "page_token", "page_token is not valid: pass the next_page_token of the previous page"
        ) from None
    return Position(create_time, int(match.group(2)))


# --- Formats -------------------------------------------------------------

# FFmpeg names some demuxers by every format they read; the name users know instead.
_CONTAINER_NAMES = {
    "matroska,webm": "webm",
    "mov,mp4,m4a,3gp,3g2,mj2": "mp4",
}


def original_format(container: str, codec: str, content_type: str = "") -> str:
    """"webm/opus", "wav/pcm_s16le", ...: the upload as detected, container/codec.

    The upload's MIME subtype picks among a demuxer's names when it is one of
    them (audio/x-matroska and audio/webm share a demuxer).
    """
    names = [name for name in container.split(",") if name]
    subtype = content_type.split(";")[0].split("/")[-1].strip().lower()
    subtype = subtype.removeprefix("x-")
    if subtype in names:
        name = subtype
    else:
        name = _CONTAINER_NAMES.get(container) or (names[0] if names else "unknown")
    return f"{name}/{codec}" if codec else name
