"""SpeechService: POST /v1/audio/speech, OpenAI's speech endpoint in front of Dia.

An OpenAI SDK's ``client.audio.speech.create(model=..., voice=..., input=...,
response_format=..., speed=...)`` works unchanged against the gateway. The
request becomes a generation and runs the generation pipeline
(:meth:`GenerationService.generate`): the same key check, script rules,
limits, routing and history, with errors naming the speech request's fields.

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
  model that does not stop by itself. Everything else is the public default.

* ``stream_format`` (StreamSpeech; over HTTP, CreateSpeech with a stream_format):
  ``audio`` sends the bytes of ``response_format`` as they are encoded, chunk by
  chunk of generated audio (the transcode service's StreamEncodeAudio); ``sse``
  sends them as OpenAI's server-sent events: ``speech.audio.delta`` events, each
  with base64 ``audio``, then one ``speech.audio.done`` with the ``usage``
  (input tokens: Dia's text bytes; output tokens: the audio frames generated).

The generation counts as succeeded once its audio is encoded (streamed: once
the last of it is generated); the history keeps the WAV
(GET /v1/voice/generations/{id}/audio).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import grpc
from google.api import httpbody_pb2

from runtime import clients, fields
from runtime.errors import invalid_argument
from runtime.text import sanitize
from services.gateway.config import SPEECH_FRAMES_PER_CHARACTER
from services.gateway.generation import parameters
from services.gateway.generation.generations import GenerationService
from voice.gateway.v1 import generations_pb2, speech_pb2, speech_pb2_grpc
from voice.library.v1 import library_pb2, library_pb2_grpc
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
DEFAULT_RESPONSE_FORMAT = fields.default(speech_pb2.CreateSpeechRequest.DESCRIPTOR.fields_by_name["response_format"])

# Generation fields as the speech request calls them, for errors.
PUBLIC_NAMES = {"speed_factor": "speed", "speakers.S1": "voice", "speakers": "voice"}
# A voice of digits is first looked up as a sample id (int64: 18 digits always fit).
SAMPLE_ID = re.compile(r"[0-9]{1,18}")
# The library's largest page: the fewest calls to look through it.
LIBRARY_PAGE_SIZE = 100
# Most voices GET /v1/audio/voices lists (newest first).
MAX_VOICES = 1000
# Longest text of the caller's quoted back in an error message.
MAX_QUOTED_CHARS = 100


def frame_budget(text: str, frames_per_character: float) -> int:
    """max_new_tokens for `text`: frames_per_character per character, within the public range."""
    bounds = parameters.RANGES["max_new_tokens"]
    wanted = math.ceil(len(sanitize(text)) * frames_per_character)
    return int(min(max(wanted, bounds.low), bounds.high))


def generation_request(
    request: speech_pb2.CreateSpeechRequest, frames_per_character: float
) -> generations_pb2.CreateGenerationRequest:
    """The speech request in the generation pipeline's terms, its voice not yet found."""
    translated = generations_pb2.CreateGenerationRequest(
        input=request.input,
        model="" if request.model in MODEL_ALIASES else request.model,
        max_new_tokens=frame_budget(request.input, frames_per_character),
    )
    if request.HasField("speed"):
        translated.speed_factor = request.speed
    return translated


def response_format(request: speech_pb2.CreateSpeechRequest) -> ResponseFormat:
    """The encoding the request asks for; its fields are checked against their declared rules first."""
    fields.check(request)
    return RESPONSE_FORMATS[fields.value(request, "response_format")]


async def find_voice(library: grpc.aio.Channel, account_id: int, voice: str) -> int | None:
    """The id of the caller's voice sample that `voice` names; None for no cloning; INVALID_VOICE_SAMPLE."""
    stub = library_pb2_grpc.LibraryServiceStub(library)
    metadata = ((clients.ACCOUNT_ID_METADATA, str(account_id)),)
    if SAMPLE_ID.fullmatch(voice):
        try:
            found = await stub.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=int(voice)), metadata=metadata)
            return found.voice_sample.id
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # also another account's sample
                raise
        # Not an id of theirs: it may still be a speaker's name.
    if not voice:
        return await _newest(stub, metadata, lambda sample: sample.is_default)
    sample_id = await _newest(stub, metadata, lambda sample: sample.speaker_name == voice)
    if sample_id is None:
        raise invalid_argument(
            "INVALID_VOICE_SAMPLE",
            f"voice {_quoted(voice)} is neither the id of a voice sample in your library nor the speaker_name "
            "of one; voice takes a sample id (\"12\"), a speaker_name, or nothing for your default sample. "
            "OpenAI's preset voices do not exist here: upload a sample of the voice to clone (POST /v1/voice/samples)",
            "voice",
        )
    return sample_id


async def _newest(
    stub: library_pb2_grpc.LibraryServiceStub, metadata, wanted: Callable[[library_pb2.VoiceSample], bool]
) -> int | None:
    """The id of the caller's newest sample that is `wanted`, paging through the library (newest first)."""
    token = ""
    while True:
        page = await stub.ListVoiceSamples(
            library_pb2.ListVoiceSamplesRequest(page_size=LIBRARY_PAGE_SIZE, page_token=token), metadata=metadata
        )
        for sample in page.voice_samples:
            if wanted(sample):
                return sample.id
        token = page.next_page_token
        if not token:
            return None


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


async def as_sse(encoded: AsyncIterator[tuple[str, bytes]], input_tokens: int, output_frames) -> AsyncIterator[bytes]:
    """OpenAI's speech events: a delta per encoded chunk, then done with the usage."""
    async for _, audio in encoded:
        if audio:
            yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})
    frames = output_frames()
    usage = {"input_tokens": input_tokens, "output_tokens": frames, "total_tokens": input_tokens + frames}
    yield sse_event({"type": "speech.audio.done", "usage": usage})


def _quoted(text: str) -> str:
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "…"
    return repr(text)


class SpeechService(speech_pb2_grpc.SpeechServiceServicer):
    def __init__(self, generations: GenerationService) -> None:
        self.generations = generations

    async def CreateSpeech(self, request, context):
        account_id = await self.generations.accounts.caller(context)

        async def finish(wav: bytes) -> httpbody_pb2.HttpBody:
            return await encode(self.generations.transcode, wav, response_format(request))

        generated = await self.generations.generate(
            account_id,
            generation_request(request, SPEECH_FRAMES_PER_CHARACTER.value),
            context,
            prepare=self._prepare(account_id, request),
            finish=finish,
            public_names=PUBLIC_NAMES,
        )
        return speech_pb2.CreateSpeechResponse(audio=generated.audio)

    async def ListVoices(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        stub = library_pb2_grpc.LibraryServiceStub(self.generations.library)
        metadata = ((clients.ACCOUNT_ID_METADATA, str(account_id)),)
        voices, token = [], ""
        while True:
            page = await stub.ListVoiceSamples(
                library_pb2.ListVoiceSamplesRequest(page_size=LIBRARY_PAGE_SIZE, page_token=token), metadata=metadata
            )
            voices += [
                speech_pb2.Voice(voice_id=str(sample.id), name=sample.speaker_name, is_default=sample.is_default)
                for sample in page.voice_samples
            ]
            token = page.next_page_token
            if not token or len(voices) >= MAX_VOICES:
                return speech_pb2.ListVoicesResponse(voices=voices[:MAX_VOICES])

    async def StreamSpeech(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        unary = speech_pb2.CreateSpeechRequest.FromString(request.SerializeToString())  # the same fields
        last: list[synth_pb2.StreamSynthesizeResponse] = []

        async def remembering_the_last(messages):
            async for message in messages:
                if message.last:
                    last.append(message)
                yield message

        stream = self.generations.stream(
            account_id,
            generation_request(unary, SPEECH_FRAMES_PER_CHARACTER.value),
            context,
            prepare=self._prepare(account_id, unary),
            public_names=PUBLIC_NAMES,
        )
        async with contextlib.aclosing(stream):
            encoded = encode_stream(self.generations.transcode, remembering_the_last(stream), response_format(unary))
            async with contextlib.aclosing(encoded):
                if fields.value(unary, "stream_format") == "sse":
                    tokens = len(sanitize(unary.input).encode())
                    async for event in as_sse(encoded, tokens, lambda: last[0].generated_frames if last else 0):
                        yield speech_pb2.StreamSpeechResponse(audio=httpbody_pb2.HttpBody(content_type=SSE, data=event))
                else:
                    async for content_type, audio in encoded:
                        if audio:
                            yield speech_pb2.StreamSpeechResponse(
                                audio=httpbody_pb2.HttpBody(content_type=content_type, data=audio)
                            )

    def _prepare(self, account_id: int, request: speech_pb2.CreateSpeechRequest):
        async def prepare(plan: parameters.Plan) -> parameters.Plan:
            response_format(request)  # refused before the library is asked
            sample_id = await find_voice(self.generations.library, account_id, request.voice)
            # max_new_tokens is the frame budget, not the caller's: the provider may lower it to fit the prompt.
            return dataclasses.replace(
                plan, speakers={} if sample_id is None else {"S1": sample_id}, chosen_max_new_tokens=False
            )

        return prepare
