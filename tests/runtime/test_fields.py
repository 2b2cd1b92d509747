"""runtime.fields: the rules the protos declare on request fields, applied (units, on the real protos)."""

from __future__ import annotations

import math

import grpc
import pytest

from runtime import fields, limits
from runtime.errors import ApiError
from voice.gateway.v1 import accounts_pb2, generations_pb2
from voice.library.v1 import library_pb2
from voice.openai.v1 import speech_pb2

Generation = generations_pb2.GenerationSpec
LIMITS = {"input_chars": 20, "collection_chars": 5}  # by the names generations.proto gives them


def refused(request, limits=LIMITS) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fields.check(request, limits)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


def test_a_required_field_left_out_or_blank_names_its_own_reason():
    for text in ("", "   "):
        error = refused(Generation(input=text))
        assert (error.reason, error.param, error.message) == ("MISSING_INPUT", "input", "input is required")
    error = refused(library_pb2.CreateVoiceSampleRequest(speaker_name="Ada"), {})
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "audio")  # an HttpBody without data


def test_lengths_are_the_named_limits_without_surrounding_blanks():
    fields.check(Generation(input="x" * 20, collection=" abcde "), LIMITS)
    error = refused(Generation(input="x" * 21))
    assert (error.reason, error.param) == ("REQUEST_TOO_LARGE", "input")
    assert error.message == "input is 21 characters; the limit is 20"
    assert refused(Generation(input="hi", collection="abcdef")).reason == "INVALID_PARAMETER"


def test_bounds_hold_at_both_edges_and_nan_is_outside():
    fields.check(Generation(input="hi", temperature=0.1, top_p=1.0, seed=-1), LIMITS)
    for name, value in [("temperature", 0.09), ("top_p", 1.01), ("seed", -2), ("cfg_scale", math.nan)]:
        error = refused(Generation(input="hi", **{name: value}))
        assert (error.reason, error.param) == ("INVALID_PARAMETER", name)
    assert refused(Generation(input="hi", temperature=3.0)).message == "temperature must be between 0.1 and 2, got 3"
    assert refused(Generation(input="hi", seed=-5)).message == "seed must be at least -1, got -5"


def test_a_left_out_field_takes_its_declared_default():
    request = Generation(input="hi")
    assert (fields.value(request, "temperature"), fields.value(request, "cfg_filter_top_k")) == (1.8, 45)
    assert (fields.value(request, "seed"), fields.value(request, "visibility")) == (-1, "private")
    assert fields.value(Generation(input="hi", temperature=0.5), "temperature") == 0.5
    assert fields.value(speech_pb2.SpeechSpec(input="hi"), "response_format") == "mp3"


def test_one_of_takes_empty_as_the_default_unless_the_field_has_presence():
    fields.check(Generation(input="hi", visibility=""), LIMITS)
    assert refused(Generation(input="hi", visibility="Public")).param == "visibility"
    fields.check(library_pb2.UpdateVoiceSampleRequest(id=1), {})  # left out: nothing to check
    error = refused(library_pb2.UpdateVoiceSampleRequest(id=1, visibility=""), {})
    assert error.message == "visibility must be one of private, unlisted, public; got ''"
    # Present but blank is refused on a required field with presence; left out is fine.
    assert refused(library_pb2.UpdateVoiceSampleRequest(id=1, speaker_name=" "), {}).param == "speaker_name"


def test_each_item_of_a_list_holds_to_the_lists_rules():
    fields.check(accounts_pb2.CreateKeyRequest(scopes=["generate", "library:read"]), {"key_name_chars": 10})
    for scopes in (["generate", "everything"], ["generate", ""]):  # an empty item is no value left out
        error = refused(accounts_pb2.CreateKeyRequest(scopes=scopes), {"key_name_chars": 10})
        assert (error.reason, error.param) == ("INVALID_PARAMETER", "scopes")
    assert refused(accounts_pb2.GetUsageRequest(group_by=["day", "week"]), {}).param == "group_by"


def test_a_largest_number_named_as_a_limit_holds_at_its_edge():
    token = accounts_pb2.CreateBrowserTokenRequest
    fields.check(token(ttl_seconds=60), {"browser_token_seconds": 60})
    error = refused(token(ttl_seconds=61), {"browser_token_seconds": 60})
    assert (error.param, error.message) == ("ttl_seconds", "ttl_seconds must be between 1 and 60, got 61")
    assert refused(token(ttl_seconds=0), {"browser_token_seconds": 60}).param == "ttl_seconds"
    fields.check(token(), {"browser_token_seconds": 60})  # left out: its default


def test_a_length_limit_is_the_services_published_limit_by_default(monkeypatch):
    from services.library.service import LIMITS as LIBRARY_LIMITS

    previous = limits.publish(LIBRARY_LIMITS)  # as the library's server does
    try:
        monkeypatch.setenv("LIBRARY_MAX_SPEAKER_NAME_CHARS", "3")  # the setting behind speaker_name_chars
        audio = library_pb2.CreateVoiceSampleRequest(audio={"data": b"x"})
        fields.check(library_pb2.CreateVoiceSampleRequest(audio=audio.audio, speaker_name="Ada"))
        assert refused(library_pb2.CreateVoiceSampleRequest(audio=audio.audio, speaker_name="Adam"), None).param == "speaker_name"
        # A caller's own value of a limit goes first.
        fields.check(library_pb2.CreateVoiceSampleRequest(audio=audio.audio, speaker_name="Adam"), {"speaker_name_chars": 4})
    finally:
        limits.publish(previous)


def test_a_limit_the_service_does_not_publish_is_an_error_naming_it():
    previous = limits.publish({})
    try:
        with pytest.raises(LookupError, match="publishes no limit 'input_chars'"):
            fields.check(Generation(input="hi"))
    finally:
        limits.publish(previous)


def test_bounds_are_published_by_kind():
    bounds = fields.bounds(Generation.DESCRIPTOR)
    assert bounds["cfg_filter_top_k"] == (1, 100, 45) and isinstance(bounds["cfg_filter_top_k"][0], int)
    assert bounds["temperature"] == (0.1, 2.0, 1.8)
    assert bounds["seed"] == (-1, math.inf, -1)


# --- no NUL in any text: PostgreSQL's text cannot hold one ----------------------


def nul_refused(request) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fields.refuse_nul(request)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER")
    assert "NUL" in caught.value.message
    return caught.value


def test_a_nul_in_any_string_is_refused_naming_the_field():
    from google.protobuf import field_mask_pb2
    from google.rpc import error_details_pb2

    from voice.synth.v1 import synth_pb2

    assert nul_refused(Generation(input="[S1] a\x00b")).param == "input"
    assert nul_refused(Generation(input="hi", speakers={"S1\x00": 1})).param == "speakers"  # a map key
    assert nul_refused(error_details_pb2.ErrorInfo(metadata={"k": "v\x00"})).param == "metadata"  # a map value
    assert nul_refused(field_mask_pb2.FieldMask(paths=["a", "b\x00"])).param == "paths"  # a list
    prompt = synth_pb2.SynthesisSpec(script="hi", audio_prompt=synth_pb2.AudioPrompt(transcript="\x00"))
    assert nul_refused(prompt).param == "audio_prompt.transcript"  # a nested message
    assert nul_refused(synth_pb2.SynthesizeRequest(synthesis=prompt)).param == "synthesis.audio_prompt.transcript"


def test_bytes_may_hold_nul_and_text_everything_else():
    fields.refuse_nul(library_pb2.CreateVoiceSampleRequest(audio={"data": b"\x00\x00"}, speaker_name="Ada \u2603\x01"))


# --- names: no control, invisible format or line-breaking character ---------------

NAMES = [
    (library_pb2.CreateVoiceSampleRequest, "speaker_name", {"audio": {"data": b"x"}}),
    (library_pb2.CreateVoiceSampleRequest, "collection", {"audio": {"data": b"x"}, "speaker_name": "Ada"}),
    (library_pb2.UpdateVoiceSampleRequest, "speaker_name", {"id": 1}),
    (library_pb2.UpdateVoiceSampleRequest, "collection", {"id": 1}),
    (generations_pb2.GenerationSpec, "collection", {"input": "hi"}),
    (generations_pb2.ListGenerationsRequest, "collection", {}),
    (generations_pb2.UpdateGenerationRequest, "collection", {"id": "gen_1"}),
]
INVISIBLE = {
    "\u200b": "U+200B ZERO WIDTH SPACE",
    "\u200c": "U+200C ZERO WIDTH NON-JOINER",
    "\u200d": "U+200D ZERO WIDTH JOINER",
    "\u2060": "U+2060 WORD JOINER",
    "\ufeff": "U+FEFF ZERO WIDTH NO-BREAK SPACE",
    "\u202e": "U+202E RIGHT-TO-LEFT OVERRIDE",
    "\u2066": "U+2066 LEFT-TO-RIGHT ISOLATE",
    "\u00ad": "U+00AD SOFT HYPHEN",
    "\U000e0041": "U+E0041 TAG LATIN CAPITAL LETTER A",  # beyond the Basic Multilingual Plane
    "\t": "U+0009",
    "\n": "U+000A",
    "\r": "U+000D",
    "\x1b": "U+001B",
    "\x7f": "U+007F",
    "\x85": "U+0085",
    "\u2028": "U+2028 LINE SEPARATOR",
    "\u2029": "U+2029 PARAGRAPH SEPARATOR",
}
LIMITS_OF_NAMES = {"collection_chars": 100, "speaker_name_chars": 100, "input_chars": 100, "transcript_chars": 100}


@pytest.mark.parametrize("message, name, others", NAMES, ids=lambda v: getattr(v, "__name__", None))
def test_a_name_refuses_control_and_invisible_characters_anywhere_naming_the_field(message, name, others):
    for character, shown in INVISIBLE.items():
        for text in (f"Ada{character}", f"{character}Ada", f"A{character}da"):
            error = refused(message(**others, **{name: text}), LIMITS_OF_NAMES)
            assert (error.reason, error.param) == ("INVALID_PARAMETER", name)
            assert f"({shown})" in error.message, error.message
    error = refused(message(**others, **{name: "Ada\u200bLovelace"}), LIMITS_OF_NAMES)
    assert error.message == (
        f"{name} holds an invisible format character (U+200B ZERO WIDTH SPACE) at position 4; "
        "a name may hold no control, invisible format or line-breaking character"
    )


@pytest.mark.parametrize("message, name, others", NAMES, ids=lambda v: getattr(v, "__name__", None))
def test_a_name_may_hold_any_other_text(message, name, others):
    for text in ("Ada Lovelace", "  Ada  ", "Zoë d'Été", "ناصر", "山田 太郎", "Ada 👩🏽‍", "Bob\u00a0Smith", "Ada (take 2) — ok!"):
        if "\u200d" in text:
            continue  # a joiner: refused above
        fields.check(message(**others, **{name: text}), LIMITS_OF_NAMES)


def test_a_files_name_is_a_name_and_other_text_is_not():
    from voice.predictor.v1 import predictions_pb2

    with pytest.raises(ApiError) as caught:
        fields.check_field(predictions_pb2.CreateFileRequest(filename="me\u200b.wav"), "filename")
    assert (caught.value.reason, caught.value.param) == ("INVALID_PARAMETER", "filename")
    fields.check_field(predictions_pb2.CreateFileRequest(filename="me & you.wav"), "filename")
    # A script or a transcript may break lines: they are text, not names.
    fields.check(Generation(input="[S1] Hello.\n[S2] Hi.\u200b"), LIMITS_OF_NAMES)
    fields.check(
        library_pb2.CreateVoiceSampleRequest(audio={"data": b"x"}, speaker_name="Ada", transcript="Hi.\nBye."),
        LIMITS_OF_NAMES,
    )


def test_the_name_pattern_matches_what_the_rule_takes():
    import re

    pattern = re.compile(fields.name_pattern())
    for character in INVISIBLE:
        if ord(character) < 0x10000:
            assert not pattern.fullmatch(f"Ada{character}"), repr(character)
    for text in ("Ada Lovelace", "Zoë", "山田", "Ada 👩🏽"):
        assert pattern.fullmatch(text)
