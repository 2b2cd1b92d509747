"""Unit tests of the library's rules: caller account, field checks, page tokens, format names."""

from __future__ import annotations

import base64
import datetime

import grpc
import pytest

from runtime import limits
from runtime.errors import ApiError
from services.library import config, rules
from services.library.service import LIMITS

UTC = datetime.timezone.utc


@pytest.fixture(autouse=True)
def library_limits():
    """The library's limits, published as its server publishes them, which its rules check against."""
    previous = limits.publish(LIMITS)
    yield
    limits.publish(previous)


def refused(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    return caught.value


# --- Caller account ------------------------------------------------------


def test_account_comes_from_x_account_id():
    assert rules.account_id([("x-account-id", "42"), ("x-request-id", "r")]) == 42
    assert rules.account_id([("x-account-id", str(2**63 - 1))]) == 2**63 - 1


@pytest.mark.parametrize(
    "metadata",
    [[], None, [("x-account-id", "")], [("x-account-id", "0")], [("x-account-id", "-3")],
     [("x-account-id", "abc")], [("x-account-id", "²")], [("x-account-id", str(2**63))]],
)
def test_missing_or_malformed_account_is_unauthenticated(metadata):
    error = refused(rules.account_id, metadata)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED")


# --- Fields --------------------------------------------------------------


def test_speaker_name_is_trimmed_and_required():
    assert rules.speaker_name("  Ada ") == "Ada"
    error = refused(rules.speaker_name, "   ")
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "speaker_name")


def test_speaker_name_limit_is_a_setting(monkeypatch):
    monkeypatch.setenv("LIBRARY_MAX_SPEAKER_NAME_CHARS", "5")
    assert rules.speaker_name("abcde") == "abcde"
    assert refused(rules.speaker_name, "abcdef").param == "speaker_name"


def test_transcript_limit_is_a_setting(monkeypatch):
    monkeypatch.setenv("LIBRARY_MAX_TRANSCRIPT_CHARS", "10")
    assert rules.transcript(" " + "x" * 10 + " ") == "x" * 10
    error = refused(rules.transcript, "x" * 11)
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "transcript"
    )
    # What speech recognition hears is cut to the limit instead: the sample is still worth keeping.
    assert rules.recognized_transcript("  " + "y" * 25) == "y" * 10


def test_collection_limit_is_a_setting(monkeypatch):
    monkeypatch.setenv("LIBRARY_MAX_COLLECTION_CHARS", "3")
    assert rules.collection(" abc ") == "abc"
    assert rules.collection("") == ""
    assert refused(rules.collection, "abcd").param == "collection"


def test_visibility_is_one_of_three_and_empty_means_private_on_upload():
    assert rules.visibility("", empty_means_default=True) == "private"
    for value in ("private", "unlisted", "public"):
        assert rules.visibility(value, empty_means_default=False) == value
    for value in ("", "Public", "secret"):
        error = refused(rules.visibility, value, empty_means_default=False)
        assert (error.reason, error.param) == ("INVALID_PARAMETER", "visibility")


def test_upload_size_edge(monkeypatch):
    monkeypatch.setenv("LIBRARY_MAX_UPLOAD_BYTES", "100")
    assert rules.audio(b"x" * 100) == b"x" * 100
    error = refused(rules.audio, b"x" * 101)
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE", "audio"
    )
    assert "100 bytes" in error.message


def test_empty_upload_names_the_audio_field():
    error = refused(rules.audio, b"")
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "audio")


def test_default_upload_limit_is_20_mib():
    rules.audio(b"\0" * (20 * 1024 * 1024))
    assert refused(rules.audio, b"\0" * (20 * 1024 * 1024 + 1)).reason == "REQUEST_TOO_LARGE"


@pytest.mark.parametrize("limit", [config.MAX_UPLOAD_BYTES, config.MAX_SAMPLE_SECONDS])
def test_a_limit_of_zero_is_refused_at_start_up(monkeypatch, limit):
    monkeypatch.setenv(limit.name, "0")
    with pytest.raises(SystemExit, match=limit.name):
        limit.value


# --- Pages ---------------------------------------------------------------


def test_page_token_round_trips_to_the_microsecond():
    position = rules.Position(datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), 987)
    token = rules.encode_page_token(position)
    assert rules.decode_page_token(token) == position
    assert token.isascii() and "=" not in token  # safe in a URL query


def test_no_page_token_is_the_first_page():
    assert rules.decode_page_token("") is None


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "djE6",  # "v1:"
        base64.urlsafe_b64encode(b"v1:12:abc").decode(),
        base64.urlsafe_b64encode(b"v2:12:34").decode(),
        base64.urlsafe_b64encode(b"v1:99999999999999999999:1").decode(),  # past year 9999
        base64.urlsafe_b64encode(f"v1:1:{2**63}".encode()).decode(),  # not a bigint id
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_a_foreign_page_token_is_invalid(token):
    error = refused(rules.decode_page_token, token)
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "page_token")


# --- Formats -------------------------------------------------------------


@pytest.mark.parametrize(
    "container, codec, content_type, expected",
    [
        ("matroska,webm", "opus", "", "webm/opus"),
        ("matroska,webm", "opus", "audio/webm;codecs=opus", "webm/opus"),
        ("matroska,webm", "vorbis", "audio/x-matroska", "matroska/vorbis"),
        ("wav", "pcm_s16le", "audio/wav", "wav/pcm_s16le"),
        ("mov,mp4,m4a,3gp,3g2,mj2", "aac", "", "mp4/aac"),
        ("mov,mp4,m4a,3gp,3g2,mj2", "aac", "audio/m4a", "m4a/aac"),
        ("ogg", "opus", "application/octet-stream", "ogg/opus"),
        ("mp3", "mp3", "", "mp3/mp3"),
    ],
)
def test_original_format_names(container, codec, content_type, expected):
    assert rules.original_format(container, codec, content_type) == expected
