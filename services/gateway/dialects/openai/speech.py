"""SpeechService: OpenAI's speech API (POST /v1/audio/speech) translated into generations.

An OpenAI SDK's ``client.audio.speech.create(model=..., voice=..., input=...,
response_format=..., speed=...)`` works unchanged against the gateway. Its
request (a SpeechSpec, checked against the rules speech.proto declares)
becomes a GenerationSpec and runs the generation pipeline: the same key
check, script rules, limits, routing and history, with errors naming the
speech request's fields. The answer is translated back into OpenAI's
formats.

* ``input``: the script, as for generations (a plain sentence is an [S1] monologue).
* ``voice``: the voice sample cloned as S1: a sample id of the caller ("12"), or
  a ``speaker_name`` in their library (exact; of several, the newest); empty, the
  caller's default sample, or no cloning without one. OpenAI's preset voices
  ("alloy") are none of these: 400 invalid_voice_sample.
* ``model``: "" or an id from GET /v1/models; OpenAI's model names
  (MODEL_ALIASES) auto-select.
* ``response_format``: encoded by the transcode service; ``pcm`` is raw 16-bit
  little-endian mono at 24 kHz, as OpenAI's is; the others are at 44.1 kHz.
* ``speed``: the generation's speed_factor (0.5 to 2.0; OpenAI's 0.25 to 4.0 is wider).
* ``max_new_tokens``, which OpenAI's request lacks, follows the input's
  length (:func:`frame_budget`), so that a short sentence is quick even on a
  model that does not stop by itself. Everything else is this API's default.

* ``stream_format`` (StreamSpeech; over HTTP, CreateSpeech with a stream_format):
  ``audio`` sends the bytes of ``response_format`` as they are encoded, chunk by
  chunk of generated audio (the transcode service's StreamEncodeAudio); ``sse``
  sends them as OpenAI's server-sent events: ``speech.audio.delta`` events, each
  with base64 ``audio``, then one ``speech.audio.done`` with the ``usage``
  (input tokens: Dia's text bytes; output tokens: the audio frames generated)
  and, not OpenAI's, the generation's ``analysis`` (word and turn timings, scores)
  when it has one.
* ``best_of``, not OpenAI's: candidates made side by side, the best returned
  (not with a stream_format).

The generation counts as succeeded once its audio is encoded (streamed: once
the last of it is generated); the history keeps the WAV
(GET /v1/voice/generations/{id}/audio).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import math
import re
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format

from runtime import clients, fields
from runtime.errors import ApiError, invalid_argument, invalid_parameter
from runtime.text import sanitize
from services.gateway.accounts import Accounts
from services.gateway.config import MAX_INPUT_CHARS, SPEECH_FRAMES_PER_CHARACTER
from services.gateway.generation import script
from services.gateway.generation.generations import announcing, named_on_failure, synth_timeout
from services.gateway.generation.library import Library
from services.gateway.generation.pipeline import STREAMED_BEST_OF, Pipeline
from voice.gateway.v1 import generations_pb2
from voice.openai.v1 import speech_pb2, speech_pb2_grpc
from voice.synth.v1 import synth_pb2
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc

# OpenAI's speech models: here they mean "any model with voice cloning".
MODEL_ALIASES = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})


@dataclass(frozen=True)
class ResponseFormat:
    encoding: transcode_pb2.AudioFormat
    sample_rate: int = 0  # 0: transcode's own 44.1 kHz


RESPONSE_FORMATS = {
    "mp3": ResponseFormat(transcode_pb2.AUDIO_FORMAT_MP3),
    "opus": ResponseFormat(transcode_pb2.AUDIO_FORMAT_OGG_OPUS),
    "aac": ResponseFormat(transcode_pb2.AUDIO_FORMAT_AAC),
    "flac": ResponseFormat(transcode_pb2.AUDIO_FORMAT_FLAC),
    "wav": ResponseFormat(transcode_pb2.AUDIO_FORMAT_WAV),
    # OpenAI's pcm has no header to say its rate; clients expect 24 kHz.
    "pcm": ResponseFormat(transcode_pb2.AUDIO_FORMAT_PCM, 24_000),
}
# As OpenAI's; speech.proto declares it, with the formats allowed.
DEFAULT_RESPONSE_FORMAT = fields.default(speech_pb2.SpeechSpec.DESCRIPTOR.fields_by_name["response_format"])

# Generation fields as the speech request calls them, for errors.
PUBLIC_NAMES = {"speed_factor": "speed", "speakers.S1": "voice", "speakers": "voice"}
# A voice of digits is first looked up as a sample id (int64: 18 digits always fit).
SAMPLE_ID = re.compile(r"[0-9]{1,18}")
# Most voices GET /v1/audio/voices lists (newest first).
MAX_VOICES = 1000
# Longest text of the caller's quoted back in an error message.
MAX_QUOTED_CHARS = 100
# max_new_tokens the budget keeps within: this API's range for it.
MAX_NEW_TOKENS = fields.bounds(generations_pb2.GenerationSpec.DESCRIPTOR)["max_new_tokens"]


def frame_budget(text: str, frames_per_character: float) -> int:
    """max_new_tokens for `text`: frames_per_character per character, within this API's range."""
    low, high, _ = MAX_NEW_TOKENS
    wanted = math.ceil(len(sanitize(text)) * frames_per_character)
    return int(min(max(wanted, low), high))


def generation_spec(
    speech: speech_pb2.SpeechSpec, sample_id: int | None, frames_per_character: float
) -> generations_pb2.GenerationSpec:
    """The speech request in the pipeline's terms: its voice found (`sample_id`, None for no cloning)."""
    spec = generations_pb2.GenerationSpec(
        input=speech.input,
        model="" if speech.model in MODEL_ALIASES else speech.model,
        max_new_tokens=frame_budget(speech.input, frames_per_character),
        speed_factor=fields.value(speech, "speed"),
        best_of=fields.value(speech, "best_of"),
    )
    if sample_id is not None:
        spec.speakers["S1"] = sample_id
    return spec


def response_format(speech: speech_pb2.SpeechSpec) -> ResponseFormat:
    return RESPONSE_FORMATS[fields.value(speech, "response_format")]


async def find_voice(library: Library, account_id: int, voice: str) -> int | None:
    """The id of the caller's voice sample that `voice` names; None for no cloning; INVALID_VOICE_SAMPLE."""
    if SAMPLE_ID.fullmatch(voice) and await library.exists(account_id, int(voice)):
        return int(voice)
    # Not an id of theirs: it may still be a speaker's name.
    if not voice:
        found = await library.newest(account_id, lambda sample: sample.is_default)
        return found.id if found is not None else None
    found = await library.newest(account_id, lambda sample: sample.speaker_name == voice)
    if found is None:
        raise invalid_argument(
            "INVALID_VOICE_SAMPLE",
            f"voice {_quoted(voice)} is neither the id of a voice sample in your library nor the speaker_name "
            "of one; voice takes a sample id (\"12\"), a speaker_name, or nothing for your default sample. "
            "OpenAI's preset voices do not exist here: upload a sample of the voice to clone (POST /v1/voice/samples)",
            "voice",
        )
    return found.id


async def encode(transcode: grpc.aio.Channel, wav: bytes, chosen: ResponseFormat) -> httpbody_pb2.HttpBody:
    stub = transcode_pb2_grpc.TranscodeServiceStub(transcode)
    reply = await stub.EncodeAudio(
        transcode_pb2.EncodeAudioRequest(audio=wav, format=chosen.encoding, sample_rate=chosen.sample_rate)
    )
    return httpbody_pb2.HttpBody(content_type=reply.content_type, data=reply.audio)


async def encode_stream(
    transcode: grpc.aio.Channel,
    messages: AsyncIterator[synth_pb2.StreamSynthesizeResponse],
    chosen: ResponseFormat,
) -> AsyncIterator[tuple[str, bytes]]:
    """A streamed generation's PCM encoded as it comes: (content type, next bytes) per chunk."""
    call = transcode_pb2_grpc.TranscodeServiceStub(transcode).StreamEncodeAudio()
    try:
        first = True
        async for message in messages:
            request = transcode_pb2.StreamEncodeAudioRequest(pcm=message.pcm)
            if first:
                request.format, request.sample_rate, first = chosen.encoding, chosen.sample_rate, False
            await call.write(request)
            reply = await call.read()  # one answer per piece
            yield reply.content_type, reply.audio
        await call.done_writing()
        while (reply := await call.read()) is not grpc.aio.EOF:  # the encoder's tail
            yield reply.content_type, reply.audio
    finally:
        call.cancel()


SSE = "text/event-stream"


def sse_event(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def as_sse(
    encoded: AsyncIterator[tuple[str, bytes]], input_tokens: int, output_frames, analysis=None
) -> AsyncIterator[bytes]:
    """OpenAI's speech events: a delta per encoded chunk, then done with the usage, and with the
    generation's `analysis()` (its word and turn timings, scores) when it has one: an extra key of
    the done event, which OpenAI's clients leave alone."""
    async for _, audio in encoded:
        if audio:
            yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})
    frames = output_frames()
    usage = {"input_tokens": input_tokens, "output_tokens": frames, "total_tokens": input_tokens + frames}
    done = {"type": "speech.audio.done", "usage": usage}
    explained = await analysis() if analysis is not None else None
    if explained is not None:
        done["analysis"] = json_format.MessageToDict(
            explained, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )  # as the API writes it
    yield sse_event(done)


def _quoted(text: str) -> str:
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "…"
    return repr(text)


class SpeechService(speech_pb2_grpc.SpeechServiceServicer):
    def __init__(self, accounts: Accounts, pipeline: Pipeline, library: Library) -> None:
        self.accounts = accounts
        self.pipeline = pipeline
        self.library = library
        self.transcode: grpc.aio.Channel | None = None

    def start(self) -> None:
        self.transcode = clients.service_channel("transcode")

    async def close(self) -> None:
        if self.transcode is not None:
            await self.transcode.close()

    async def _admit(self, account_id: int, speech: speech_pb2.SpeechSpec, key_id: int = 0, streamed: bool = False):
        """The speech request checked against its own rules, translated, and admitted."""
        try:
            fields.check_field(speech, "input")
            script.parse_script(speech.input, MAX_INPUT_CHARS.value)  # a bad script before the library is asked
            fields.check(speech)
            if streamed and fields.value(speech, "best_of") > 1:
                raise invalid_parameter("best_of", f"best_of above 1 is not possible {STREAMED_BEST_OF}; use best_of 1")
            sample_id = await find_voice(self.library, account_id, speech.voice)
        except (ApiError, grpc.aio.AioRpcError) as error:
            raise (error if isinstance(error, ApiError) else ApiError.from_rpc_error(error)) from None
        spec = generation_spec(speech, sample_id, SPEECH_FRAMES_PER_CHARACTER.value)
        return await self.pipeline.admit(account_id, spec, rules=False, names=PUBLIC_NAMES, key_id=key_id)

    async def CreateSpeech(self, request, context):
        caller = await self.accounts.principal(context)
        account_id = caller.account_id
        speech = request.speech
        admitted = await self._admit(account_id, speech, caller.key_id)

        async def finish(wav: bytes) -> httpbody_pb2.HttpBody:
            return await encode(self.transcode, wav, response_format(speech))

        with named_on_failure(context, admitted.generation_id):
            generated = await self.pipeline.run(
                admitted,
                synth_timeout(context),
                announce=announcing(context, admitted.generation_id),
                finish=finish,
                names=PUBLIC_NAMES,
            )
        return speech_pb2.CreateSpeechResponse(audio=generated.audio)

    async def ListVoices(self, request, context):
        account_id = await self.accounts.caller(context)
        voices = [
            speech_pb2.Voice(voice_id=str(sample.id), name=sample.speaker_name, is_default=sample.is_default)
            async for sample in self.library.every(account_id, most=MAX_VOICES)
        ]
        return speech_pb2.ListVoicesResponse(voices=voices)

    async def StreamSpeech(self, request, context):
        caller = await self.accounts.principal(context)
        account_id = caller.account_id
        speech = request.speech
        admitted = await self._admit(account_id, speech, caller.key_id, streamed=True)
        last: list[synth_pb2.StreamSynthesizeResponse] = []

        async def remembering_the_last(messages):
            async for message in messages:
                if message.last:
                    last.append(message)
                yield message

        with named_on_failure(context, admitted.generation_id):
            stream = self.pipeline.run_streamed(
                admitted,
                synth_timeout(context),
                announce=announcing(context, admitted.generation_id),
                names=PUBLIC_NAMES,
            )
            async with contextlib.aclosing(stream):
                encoded = encode_stream(self.transcode, remembering_the_last(stream), response_format(speech))
                async with contextlib.aclosing(encoded):
                    if fields.value(speech, "stream_format") == "sse":
                        tokens = len(sanitize(speech.input).encode())
                        explained = functools.partial(self.pipeline.analysis, account_id, admitted.generation_id)
                        async for event in as_sse(
                            encoded, tokens, lambda: last[0].generated_frames if last else 0, explained
                        ):
                            yield speech_pb2.StreamSpeechResponse(audio=httpbody_pb2.HttpBody(content_type=SSE, data=event))
                    else:
                        async for content_type, audio in encoded:
                            if audio:
                                yield speech_pb2.StreamSpeechResponse(
                                    audio=httpbody_pb2.HttpBody(content_type=content_type, data=audio)
                                )
