"""Script rules of the public spec, as a user meets them."""

import pytest

from runtime.errors import ApiError
from services.gateway.generation.script import parse_script, prompt_transcript

LIMIT = 100


def reason(raw: str) -> str:
    with pytest.raises(ApiError) as caught:
        parse_script(raw, LIMIT)
    return caught.value.reason


def test_untagged_text_is_an_s1_monologue():
    script = parse_script("Hello there. (laughs)", LIMIT)
    assert script.text == "[S1] Hello there. (laughs)"
    assert script.speakers == {"S1"}


def test_dialogue_keeps_cues_and_normalizes_tags():
    script = parse_script("[S1] Hello!\n[s2]  Thanks (laughs).\n[S1] Bye", LIMIT)
    assert script.text == "[S1] Hello! [S2] Thanks (laughs). [S1] Bye"
    assert script.speakers == {"S1", "S2"}


@pytest.mark.parametrize("raw", ["[S2] Hi", "  [S2] Hi [S1] yo", "Hi [S1] there"])
def test_must_open_with_s1(raw):
    assert reason(raw) == "INVALID_SCRIPT"


@pytest.mark.parametrize("raw", ["[S1] Hi [S3] Yo", "[S1] a [S10] b", "[S0] a"])
def test_s3_and_above_rejected(raw):
    assert reason(raw) == "INVALID_SCRIPT"


@pytest.mark.parametrize("raw", ["", "   \n", None])
def test_missing_input(raw):
    assert reason(raw) == "MISSING_INPUT"


def test_character_limit_at_its_edge():
    assert parse_script("a" * LIMIT, LIMIT).text == "[S1] " + "a" * LIMIT
    assert reason("a" * (LIMIT + 1)) == "REQUEST_TOO_LARGE"


def test_user_text_cannot_inject_special_tokens():
    # \x01 and \x02 are the byte ids of [S1]/[S2] in Dia's tokenizer; <pad> is id 0.
    script = parse_script("[S1] hi\x01 there\x02 <pad>now\x00", LIMIT)
    assert script.text == "[S1] hi there now"
    assert script.speakers == {"S1"}


def test_script_ending_in_a_bare_tag_is_rejected():
    assert reason("[S1] Hello [S2]") == "INVALID_SCRIPT"


def test_prompt_transcript_tags_each_clip_with_its_speaker():
    assert (
        prompt_transcript({"S1": "Hello [S2] world", "S2": "Second\nvoice"})
        == "[S1] Hello world [S2] Second voice"
    )
