"""GenerationService: this API's face of the generation pipeline, and the history.

Callers authenticate with ``authorization: Bearer <key>`` metadata, or come
through the HTTP edge, which checked their key (see accounts.py).
CreateGeneration and StreamGeneration run a GenerationSpec through the
pipeline (pipeline.py) as it is: this API's spec is the canonical one.

The audio is in the object store (storage.py): GetGenerationAudio and its
keyless twins read it whole (for gRPC clients); over HTTP their routes are
answered by the Download* methods, which send it as it is read (a byte range
of it when asked), or send the client to the store (GATEWAY_AUDIO_REDIRECTS).

Response metadata: ``x-generation-id`` names the generation in the history
(also when it failed: with an error it comes in the trailing metadata), and
``x-max-new-tokens`` the max_new_tokens it runs with, sent once its voice
prompt is ready and before any audio; the HTTP edge passes both on as
headers.
"""

from __future__ import annotations

import contextlib

import grpc
from google.api import httpbody_pb2

from runtime import fields
from runtime.errors import ApiError, invalid_parameter
from services.gateway.accounts import Accounts
from services.gateway.config import SYNTH_TIMEOUT_SECONDS
from services.gateway.generation.audio_urls import AudioUrls
from services.gateway.generation.captions import srt, webvtt
from services.gateway.generation.pipeline import STREAMED_BEST_OF, WAV, Pipeline, streamed_wav
from services.gateway.generation.resources import generation_message
from services.gateway.generation.storage import AudioStorage
from services.gateway.store.generations import GenerationsTable, audio_expired
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc

GENERATION_ID_METADATA = "x-generation-id"
MAX_NEW_TOKENS_METADATA = "x-max-new-tokens"
VTT = "text/vtt"
SRT = "application/x-subrip"


def synth_timeout(context: grpc.aio.ServicerContext) -> float:
    """The seconds a generation may take: GATEWAY_SYNTH_TIMEOUT_SECONDS, or less if the caller waits less."""
    timeout = SYNTH_TIMEOUT_SECONDS.value
    if context.time_remaining() is not None:
        timeout = min(timeout, context.time_remaining())
    return timeout


def announcing(context: grpc.aio.ServicerContext, generation_id: str):
    """The pipeline's `announce` for a gRPC call: the generation's id and max_new_tokens, as response metadata."""

    async def announce(parameters) -> None:
        await context.send_initial_metadata(
            ((GENERATION_ID_METADATA, generation_id), (MAX_NEW_TOKENS_METADATA, str(parameters.max_new_tokens)))
        )

    return announce


@contextlib.contextmanager
def named_on_failure(context: grpc.aio.ServicerContext, generation_id: str):
    """A generation that fails before it is announced still names itself (trailing metadata)."""
    try:
        yield
    except BaseException:
        context.set_trailing_metadata(((GENERATION_ID_METADATA, generation_id),))
        raise


class GenerationService(generations_pb2_grpc.GenerationServiceServicer):
    def __init__(
        self,
        accounts: Accounts,
        pipeline: Pipeline,
        generations: GenerationsTable,
        urls: AudioUrls,
        storage: AudioStorage,
    ) -> None:
        self.accounts = accounts
        self.pipeline = pipeline
        self.generations = generations
        self.urls = urls
        self.storage = storage

    # --- generating ------------------------------------------------------------

    async def CreateGeneration(self, request, context):
        caller = await self.accounts.principal(context)
        admitted = await self.pipeline.admit(
            caller.account_id, request.generation, generation_id=request.generation_id, key_id=caller.key_id
        )
        with named_on_failure(context, admitted.generation_id):
            generated = await self.pipeline.run(
                admitted, synth_timeout(context), announce=announcing(context, admitted.generation_id)
            )
        return generations_pb2.CreateGenerationResponse(generation=generated.generation, audio=generated.audio)

    async def StreamGeneration(self, request, context):
        caller = await self.accounts.principal(context)
        if fields.value(request.generation, "best_of") > 1:
            raise invalid_parameter("best_of", f"best_of above 1 is not possible {STREAMED_BEST_OF}; use best_of 1")
        admitted = await self.pipeline.admit(
            caller.account_id, request.generation, generation_id=request.generation_id, key_id=caller.key_id
        )
        with named_on_failure(context, admitted.generation_id):
            messages = self.pipeline.run_streamed(
                admitted, synth_timeout(context), announce=announcing(context, admitted.generation_id)
            )
            # Closed now, not when collected: it stops the provider.
            async with contextlib.aclosing(streamed_wav(messages)) as bodies:
                async for body in bodies:
                    yield generations_pb2.StreamGenerationResponse(audio=body)

    # --- history ---------------------------------------------------------------

    async def ListGenerations(self, request, context):
        account_id = await self.accounts.caller(context)
        fields.check(request)
        rows, next_token = await self.generations.list_page(
            account_id, request.page_size, request.page_token, request.status, request.collection
        )
        return generations_pb2.ListGenerationsResponse(
            generations=[generation_message(row, self.urls) for row in rows], next_page_token=next_token
        )

    async def GetGeneration(self, request, context):
        account_id = await self.accounts.caller(context)
        row = await self.generations.get(account_id, request.id)
        return generations_pb2.GetGenerationResponse(generation=generation_message(row, self.urls))

    async def UpdateGeneration(self, request, context):
        account_id = await self.accounts.caller(context)
        fields.check(request)
        row = await self.generations.update_sharing(
            account_id,
            request.id,
            request.visibility if request.HasField("visibility") else None,
            request.collection if request.HasField("collection") else None,
        )
        return generations_pb2.UpdateGenerationResponse(generation=generation_message(row, self.urls))

    async def GetGenerationCaptions(self, request, context):
        analysis, duration = await self._analysis(context, request.id)
        captions = httpbody_pb2.HttpBody(content_type=VTT, data=webvtt(analysis, duration).encode())
        return generations_pb2.GetGenerationCaptionsResponse(captions=captions)

    async def GetGenerationSubtitles(self, request, context):
        analysis, duration = await self._analysis(context, request.id)
        captions = httpbody_pb2.HttpBody(content_type=SRT, data=srt(analysis, duration).encode())
        return generations_pb2.GetGenerationSubtitlesResponse(captions=captions)

    async def _analysis(self, context, generation_id: str) -> tuple[generations_pb2.GenerationAnalysis, float]:
        account_id = await self.accounts.caller(context)
        generation = generation_message(await self.generations.get(account_id, generation_id), self.urls)
        if not generation.HasField("analysis"):
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                "ANALYSIS_NOT_FOUND",
                f"generation {generation_id} has no analysis to caption: it did not succeed, or was made while the "
                "gateway's analysis was off (GATEWAY_ANALYSIS) or could not run",
            )
        return generation.analysis, generation.audio_duration_seconds

    async def GetGenerationAudio(self, request, context):
        account_id = await self.accounts.caller(context)
        stored = await self.generations.audio(account_id, request.id)
        audio = httpbody_pb2.HttpBody(content_type=WAV, data=await self.storage.read(stored))
        return generations_pb2.GetGenerationAudioResponse(audio=audio)

    async def DownloadGenerationAudio(self, request, context):
        account_id = await self.accounts.caller(context)
        stored = await self.generations.audio(account_id, request.id)
        async for piece in self.storage.download(stored, context, redirect=True):
            yield generations_pb2.DownloadGenerationAudioResponse(audio=piece)

    async def GetSharedGenerationAudio(self, request, context):
        # No key: the share token is the secret (see GenerationsTable.shared_audio).
        stored = await self.generations.shared_audio(request.share_token)
        audio = httpbody_pb2.HttpBody(content_type=WAV, data=await self.storage.read(stored))
        return generations_pb2.GetSharedGenerationAudioResponse(audio=audio)

    async def DownloadSharedGenerationAudio(self, request, context):
        stored = await self.generations.shared_audio(request.share_token)
        async for piece in self.storage.download(stored, context, redirect=True):
            yield generations_pb2.DownloadSharedGenerationAudioResponse(audio=piece)

    async def GetSignedGenerationAudio(self, request, context):
        stored = await self._signed(request)
        audio = httpbody_pb2.HttpBody(content_type=WAV, data=await self.storage.read(stored))
        return generations_pb2.GetSignedGenerationAudioResponse(audio=audio)

    async def DownloadSignedGenerationAudio(self, request, context):
        stored = await self._signed(request)
        async for piece in self.storage.download(stored, context, redirect=True, until=request.expires):
            yield generations_pb2.DownloadSignedGenerationAudioResponse(audio=piece)

    async def _signed(self, request):
        """Behind a signed URL, no key: the signature is the secret (see audio_urls.py), checked before
        anything is said of the audio (that it expired, say)."""
        epoch, stored = await self.generations.signed_audio(request.id)
        self.urls.check(request.id, request.expires, request.signature, epoch)
        if stored is None:
            raise audio_expired(request.id)
        return stored

    async def DeleteGeneration(self, request, context):
        account_id = await self.accounts.caller(context)
        key = await self.generations.delete(account_id, request.id)
        await self.storage.let_go([key] if key else [])
        return generations_pb2.DeleteGenerationResponse()
