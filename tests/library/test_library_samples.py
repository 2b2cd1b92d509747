"""Voice samples end to end over gRPC: the running library, transcode (and STT when present)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.library.service import AUDIO_PIECE_BYTES
from tests.audio import wav_file
from tests.library.helpers import (
    as_account,
    audio_of,
    library_client,
    new_account,
    refusal,
    speech_webm,
    tone_ogg_opus,
    tone_wav,
    upload,
    wav_properties,
)
from voice.library.v1 import library_pb2, library_pb2_grpc
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc


async def get(stub, account: int, sample_id: int) -> library_pb2.VoiceSample:
    reply = await stub.GetVoiceSample(
        library_pb2.GetVoiceSampleRequest(id=sample_id), metadata=as_account(account), timeout=30
    )
    return reply.voice_sample


async def update(stub, account: int, sample_id: int, **fields) -> library_pb2.VoiceSample:
    reply = await stub.UpdateVoiceSample(
        library_pb2.UpdateVoiceSampleRequest(id=sample_id, **fields),
        metadata=as_account(account),
        timeout=30,
    )
    return reply.voice_sample


async def list_page(stub, account: int, page_size: int = 0, page_token: str = ""):
    return await stub.ListVoiceSamples(
        library_pb2.ListVoiceSamplesRequest(page_size=page_size, page_token=page_token),
        metadata=as_account(account),
        timeout=30,
    )


async def defaults(stub, account: int) -> list[int]:
    page = await list_page(stub, account, page_size=100)
    return [sample.id for sample in page.voice_samples if sample.is_default]


# --- Upload, read, change, delete ---------------------------------------


async def test_a_browser_recording_is_stored_with_its_normalized_wav(library, account):
    recording = speech_webm()
    sample = await upload(
        library, account, recording, content_type="audio/webm;codecs=opus",
        speaker_name="  Ada  ", transcript="Hello world, this is a voice sample for testing.",
        collection="podcast",
    )
    assert sample.id > 0
    assert sample.speaker_name == "Ada"
    assert sample.transcript == "Hello world, this is a voice sample for testing."
    assert sample.transcript_source == "user"
    assert sample.original_format == "webm/opus"
    assert sample.original_size_bytes == len(recording)
    assert (sample.visibility, sample.collection, sample.is_default) == ("private", "podcast", False)
    assert 2.5 < sample.duration_seconds < 3.5  # the fixture says its sentence in about 3 s
    assert sample.create_time.ToDatetime() == sample.update_time.ToDatetime()

    assert await get(library, account, sample.id) == sample
    rate, channels, width, seconds = wav_properties(await audio_of(library, account, sample.id))
    assert (rate, channels, width) == (44100, 1, 2)
    assert seconds == pytest.approx(sample.duration_seconds, abs=0.01)


async def test_other_formats_are_normalized_too(library, account):
    ogg = await upload(library, account, tone_ogg_opus(1.0), transcript="tone")
    wav = await upload(library, account, tone_wav(1.5, rate=8000), transcript="tone")
    assert ogg.original_format == "ogg/opus"
    assert wav.original_format == "wav/pcm_s16le"
    for sample, seconds in ((ogg, 1.0), (wav, 1.5)):
        rate, channels, width, duration = wav_properties(await audio_of(library, account, sample.id))
        assert (rate, channels, width) == (44100, 1, 2)
        assert duration == pytest.approx(seconds, abs=0.05)


async def test_an_upload_sent_on_to_transcode_in_several_pieces_is_normalized_whole(library, account, mesh):
    # Noise, so that a piece lost, doubled or out of order would change the result; the
    # library sends AUDIO_PIECE_BYTES at a time: two whole pieces and a part of one.
    samples = np.random.default_rng(3).integers(-8000, 8000, (AUDIO_PIECE_BYTES * 5 // 8, 2))  # 4 bytes a frame
    recording = wav_file(samples, 44100, channels=2)
    assert 2 * AUDIO_PIECE_BYTES < len(recording) < 3 * AUDIO_PIECE_BYTES
    sample = await upload(library, account, recording, transcript="noise")
    assert sample.original_size_bytes == len(recording)
    async with library_client(mesh.address("transcode")) as channel:
        whole = await transcode_pb2_grpc.TranscodeServiceStub(channel).DecodeAudio(
            transcode_pb2.DecodeAudioRequest(audio=recording), timeout=60
        )
    assert await audio_of(library, account, sample.id) == whole.wav
    assert sample.duration_seconds == pytest.approx(whole.info.duration_seconds)


async def test_update_changes_only_the_fields_present(library, account):
    sample = await upload(library, account, tone_wav(1.0), transcript="first words", collection="a")
    renamed = await update(library, account, sample.id, speaker_name="Grace")
    assert renamed.speaker_name == "Grace"
    assert (renamed.transcript, renamed.collection, renamed.visibility) == ("first words", "a", "private")
    assert renamed.create_time == sample.create_time
    assert renamed.update_time.ToDatetime() > sample.update_time.ToDatetime()

    shared = await update(library, account, sample.id, visibility="unlisted", collection="")
    assert (shared.visibility, shared.collection, shared.speaker_name) == ("unlisted", "", "Grace")
    assert await get(library, account, sample.id) == shared


async def test_a_transcript_set_by_the_user_is_the_users(library, account):
    sample = await upload(library, account, tone_wav(1.0), transcript="typed")
    corrected = await update(library, account, sample.id, transcript=" corrected words ")
    assert (corrected.transcript, corrected.transcript_source) == ("corrected words", "user")
    cleared = await update(library, account, sample.id, transcript="")
    assert (cleared.transcript, cleared.transcript_source) == ("", "")


async def test_without_a_transcript_speech_recognition_fills_it_in_when_there_is_one(
    library, account, mesh
):
    sample = await upload(library, account, speech_webm())
    if "stt" in mesh.services:
        assert sample.transcript_source == "stt"
        assert "hello" in sample.transcript.lower()
    else:  # no speech recognition in this mesh: stored all the same, to be typed in later
        assert (sample.transcript, sample.transcript_source) == ("", "")
    typed = await update(library, account, sample.id, transcript="Hello world")
    assert typed.transcript_source == "user"


async def test_delete_removes_the_sample_and_its_audio(library, account):
    kept = await upload(library, account, tone_wav(1.0), transcript="kept")
    gone = await upload(library, account, tone_wav(1.0), transcript="gone")
    await library.DeleteVoiceSample(
        library_pb2.DeleteVoiceSampleRequest(id=gone.id), metadata=as_account(account), timeout=30
    )
    for call in (
        library.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=gone.id), metadata=as_account(account)),
        library.GetVoiceSampleAudio(
            library_pb2.GetVoiceSampleAudioRequest(id=gone.id), metadata=as_account(account)
        ),
        library.DeleteVoiceSample(
            library_pb2.DeleteVoiceSampleRequest(id=gone.id), metadata=as_account(account)
        ),
    ):
        error = await refusal(call)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    remaining = await list_page(library, account)
    assert [sample.id for sample in remaining.voice_samples] == [kept.id]


# --- The default sample ---------------------------------------------------


async def test_the_default_flag_moves_from_sample_to_sample(library, account):
    first = await upload(library, account, tone_wav(1.0), transcript="one", is_default=True)
    assert first.is_default
    second = await upload(library, account, tone_wav(1.0), transcript="two", is_default=True)
    assert second.is_default
    assert await defaults(library, account) == [second.id]

    again = await update(library, account, first.id, is_default=True)
    assert again.is_default
    assert await defaults(library, account) == [first.id]

    # Changing another field leaves the flag alone; false clears it.
    assert (await update(library, account, first.id, collection="x")).is_default
    assert not (await update(library, account, first.id, is_default=False)).is_default
    assert await defaults(library, account) == []


async def test_concurrent_default_changes_leave_exactly_one_default(library, account):
    samples = [await upload(library, account, tone_wav(0.5), transcript=str(n)) for n in range(4)]
    for round_ in range(8):
        # Every sample asks to be the default at the same moment; each request succeeds.
        replies = await asyncio.gather(
            *(update(library, account, sample.id, is_default=True) for sample in samples)
        )
        assert all(reply.is_default for reply in replies)
        winners = await defaults(library, account)
        assert len(winners) == 1, f"round {round_}: defaults {winners}"


async def test_a_default_of_one_account_leaves_anothers_alone(library, account):
    other = new_account()
    mine = await upload(library, account, tone_wav(0.5), transcript="mine", is_default=True)
    theirs = await upload(library, other, tone_wav(0.5), transcript="theirs", is_default=True)
    assert await defaults(library, account) == [mine.id]
    assert await defaults(library, other) == [theirs.id]


# --- Listing ---------------------------------------------------------------


async def test_pages_go_newest_first_and_end_with_an_empty_token(library, account):
    created = [await upload(library, account, tone_wav(0.3), transcript=str(n)) for n in range(5)]
    newest_first = [sample.id for sample in reversed(created)]

    seen, token, pages = [], "", 0
    while True:
        page = await list_page(library, account, page_size=2, page_token=token)
        pages += 1
        assert len(page.voice_samples) <= 2
        seen += [sample.id for sample in page.voice_samples]
        token = page.next_page_token
        if not token:
            break
    assert (seen, pages) == (newest_first, 3)

    everything = await list_page(library, account)  # default page size 20
    assert [sample.id for sample in everything.voice_samples] == newest_first
    assert everything.next_page_token == ""
    exact = await list_page(library, account, page_size=5)
    assert exact.next_page_token == ""  # no empty last page


async def test_default_page_size_is_20_and_the_most_is_100(library, account):
    for n in range(21):
        await upload(library, account, tone_wav(0.1), transcript=str(n))
    first = await list_page(library, account)
    assert len(first.voice_samples) == 20 and first.next_page_token
    rest = await list_page(library, account, page_token=first.next_page_token)
    assert len(rest.voice_samples) == 1 and not rest.next_page_token
    assert len((await list_page(library, account, page_size=100)).voice_samples) == 21


@pytest.mark.parametrize("page_size", [-1, 101])
async def test_page_size_out_of_range_is_refused(library, account, page_size):
    error = await refusal(list_page(library, account, page_size=page_size))
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "page_size"
    )


async def test_a_made_up_page_token_is_refused(library, account):
    error = await refusal(list_page(library, account, page_token="not-a-token"))
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "page_token"
    )


# --- Accounts ------------------------------------------------------------


async def test_another_accounts_sample_is_not_found_in_every_rpc(library, account):
    sample = await upload(library, account, tone_wav(0.5), transcript="private words")
    stranger = as_account(new_account())
    calls = {
        "get": library.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=sample.id), metadata=stranger),
        "audio": library.GetVoiceSampleAudio(
            library_pb2.GetVoiceSampleAudioRequest(id=sample.id), metadata=stranger
        ),
        "update": library.UpdateVoiceSample(
            library_pb2.UpdateVoiceSampleRequest(id=sample.id, speaker_name="Mallory", is_default=True),
            metadata=stranger,
        ),
        "delete": library.DeleteVoiceSample(
            library_pb2.DeleteVoiceSampleRequest(id=sample.id), metadata=stranger
        ),
    }
    missing = (await refusal(library.GetVoiceSample(
        library_pb2.GetVoiceSampleRequest(id=2**62), metadata=stranger
    )))
    for name, call in calls.items():
        error = await refusal(call)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND"), name
        assert error.message.replace(str(sample.id), "N") == missing.message.replace(str(2**62), "N")
    listed = await library.ListVoiceSamples(library_pb2.ListVoiceSamplesRequest(), metadata=stranger)
    assert list(listed.voice_samples) == []
    assert await get(library, account, sample.id) == sample  # untouched


async def test_every_rpc_needs_the_callers_account(library, account):
    sample = await upload(library, account, tone_wav(0.5), transcript="x")
    calls = [
        library.CreateVoiceSample(library_pb2.CreateVoiceSampleRequest(speaker_name="x")),
        library.ListVoiceSamples(library_pb2.ListVoiceSamplesRequest()),
        library.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=sample.id)),
        library.GetVoiceSampleAudio(library_pb2.GetVoiceSampleAudioRequest(id=sample.id)),
        library.UpdateVoiceSample(library_pb2.UpdateVoiceSampleRequest(id=sample.id, speaker_name="y")),
        library.DeleteVoiceSample(library_pb2.DeleteVoiceSampleRequest(id=sample.id)),
        library.GetVoiceSample(
            library_pb2.GetVoiceSampleRequest(id=sample.id), metadata=(("x-account-id", "abc"),)
        ),
    ]
    for call in calls:
        error = await refusal(call)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED")
    assert await get(library, account, sample.id) == sample


# --- Bad input -------------------------------------------------------------


async def test_undecodable_audio_is_refused_and_nothing_stored(library, account):
    error = await refusal(upload(library, account, b"this is not audio at all" * 100))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_DECODE_FAILED")
    truncated = speech_webm()[:300]
    error = await refusal(upload(library, account, truncated))
    assert error.reason == "AUDIO_DECODE_FAILED"
    assert list((await list_page(library, account)).voice_samples) == []


async def test_empty_audio_names_the_audio_field(library, account):
    error = await refusal(upload(library, account, b""))
    assert (error.code, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "audio")


async def test_audio_over_the_default_120_seconds_is_too_long(library, account):
    error = await refusal(upload(library, account, tone_wav(121, rate=8000)))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_TOO_LONG")


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"speaker_name": ""}, "speaker_name"),
        ({"speaker_name": "x" * 101}, "speaker_name"),
        ({"transcript": "x" * 2001}, "transcript"),
        ({"collection": "x" * 101}, "collection"),
        ({"visibility": "secret"}, "visibility"),
    ],
)
async def test_invalid_fields_are_refused_by_name(library, account, fields, param):
    sample = await upload(library, account, tone_wav(0.2), transcript="ok")
    for call in (
        upload(library, account, tone_wav(0.2), **fields),
        update(library, account, sample.id, **fields),
    ):
        error = await refusal(call)
        assert (error.code, error.reason, error.param) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", param
        )
    assert await get(library, account, sample.id) == sample
    assert len((await list_page(library, account)).voice_samples) == 1


async def test_fields_at_their_default_limits_are_accepted(library, account):
    sample = await upload(
        library, account, tone_wav(0.2),
        speaker_name="n" * 100, transcript="t" * 2000, collection="c" * 100, visibility="public",
    )
    assert (len(sample.speaker_name), len(sample.transcript), len(sample.collection)) == (100, 2000, 100)
    assert sample.visibility == "public"


# --- samples as synth makes voice prompts of them (PromptSampleService) -----------------------


async def prompt_sample(mesh, account: int, sample_id: int) -> library_pb2.GetPromptSampleResponse:
    async with library_client(mesh.address("library")) as channel:
        return await library_pb2_grpc.PromptSampleServiceStub(channel).GetPromptSample(
            library_pb2.GetPromptSampleRequest(account_id=account, id=sample_id), timeout=60
        )


async def test_a_prompt_sample_has_its_audio_and_the_word_timings_heard_at_upload(library, account, mesh):
    typed = await upload(library, account, speech_webm(), transcript="Hello world, typed by its owner.")
    if "stt" not in mesh.services:
        pytest.skip("no speech recognition in this mesh")
    found = await prompt_sample(mesh, account, typed.id)
    # The typed transcript is kept, and the audio was heard too: its words are timed, in order.
    assert found.transcript == "Hello world, typed by its owner."
    assert found.words_timed and "hello" in found.words[0].text.lower()
    assert all(w.start_seconds <= w.end_seconds for w in found.words)
    assert all(a.end_seconds <= b.start_seconds + 1e-6 for a, b in zip(found.words, found.words[1:]))
    assert found.words[-1].end_seconds <= found.duration_seconds + 0.05
    assert found.wav == await audio_of(library, account, typed.id)
    assert found.update_time == typed.update_time  # the version prompts are cached by


async def test_a_prompt_sample_is_the_accounts_own(library, account, mesh):
    sample = await upload(library, account, tone_wav(1.0), transcript="typed")
    error = await refusal(prompt_sample(mesh, new_account(), sample.id))
    assert error.code == grpc.StatusCode.NOT_FOUND  # another account's, as a missing one
    error = await refusal(prompt_sample(mesh, 0, sample.id))
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "account_id")


async def prompt_samples(mesh, account: int, ids: list[int]) -> library_pb2.BatchGetPromptSamplesResponse:
    async with library_client(mesh.address("library")) as channel:
        return await library_pb2_grpc.PromptSampleServiceStub(channel).BatchGetPromptSamples(
            library_pb2.BatchGetPromptSamplesRequest(account_id=account, ids=ids), timeout=60
        )


async def test_prompt_samples_asked_at_once_are_answered_in_order_each_as_alone(library, account, mesh):
    first = await upload(library, account, tone_wav(1.0), transcript="first")
    second = await upload(library, account, tone_wav(1.5), transcript="second")
    other = await upload(library, new_account(), tone_wav(1.0), transcript="another account's")
    gone = await upload(library, account, tone_wav(1.0), transcript="deleted")
    await library.DeleteVoiceSample(
        library_pb2.DeleteVoiceSampleRequest(id=gone.id), metadata=as_account(account), timeout=30
    )
    asked = [second.id, first.id, other.id, second.id, gone.id, 999_999_999]
    answer = await prompt_samples(mesh, account, asked)
    # Another account's sample, a deleted one and one never stored are not found, as GetPromptSample's NOT_FOUND.
    assert [result.found for result in answer.results] == [True, True, False, True, False, False]
    assert [result.sample.id for result in answer.results if result.found] == [second.id, first.id, second.id]
    assert answer.results[1].sample == await prompt_sample(mesh, account, first.id)
    assert answer.results[0].sample == answer.results[3].sample == await prompt_sample(mesh, account, second.id)


async def test_prompt_samples_are_asked_one_to_eight_at_once(library, account, mesh):
    sample = await upload(library, account, tone_wav(1.0), transcript="typed")
    for ids in ([], [sample.id] * 9):
        error = await refusal(prompt_samples(mesh, account, ids))
        assert (error.reason, error.param) == ("INVALID_PARAMETER", "ids")
    error = await refusal(prompt_samples(mesh, 0, [sample.id]))
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "account_id")
