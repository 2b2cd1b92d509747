"""LibraryService: each account's voice samples, described in PostgreSQL, their audio in the object store.

An upload is checked (account, fields, size), normalized to 44.1 kHz mono WAV
by the transcode service, heard by the STT service (when one is reachable:
the transcript when the user typed none, and in any case the times of its
words, which synth's voice prompts are cut by, PromptSampleService); its audio (the upload as it came, and the
WAV) is stored in the object store (S3, runtime/objects.py), then its row is
inserted; the reply goes out only after the commit. Objects whose row is never
committed (the database refused it) are deleted at once, or, had the process
died between the two, by the sweep once older than S3_ORPHAN_GRACE_SECONDS;
deleting a sample (or all of an account's, AccountDataService.DeleteAccountSamples) deletes
its objects too (store.py hands them over in the statement that deletes the
rows, so a store that is down then does not keep them). At most LIBRARY_MAX_CONCURRENT_UPLOADS are
worked on at once, which bounds the memory uploads take (each holds a few
copies of its audio); one more is refused at once with UPLOADS_BUSY and a
Retry-After from how fast uploads have been finishing. Those copies are few:
the request arrives as an :class:`Upload` (the message without the audio, and
a view of the audio in what was received), the audio goes to transcode in
pieces of AUDIO_PIECE_BYTES (StreamingDecodeAudio, runtime.wire), the WAV
comes back as a view of the received reply, and both go to the object store
one after the other, a part of S3_MULTIPART_PART_BYTES at a time.
Downloads (DownloadVoiceSampleAudio) are read from the store a window at a time
(runtime/downloads.py), never whole.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import pathlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import prometheus_client
from google.api import httpbody_pb2
from google.protobuf import descriptor

from runtime import clients, downloads, fields, objects, pagination, wire
from runtime.admission import Gate
from runtime.database import CONNECTION_ERRORS, is_reachable, open_pool, unavailable
from runtime.errors import ApiError, invalid_parameter
from runtime.server import ServiceSpec, Servicer, stop_task
from services.library import config, rules, store
from voice.library.v1 import library_pb2, library_pb2_grpc
from voice.stt.v1 import stt_pb2
from voice.transcode.v1 import transcode_pb2

log = logging.getLogger("library")

PROMPT_SAMPLES = prometheus_client.Counter(
    "library_prompt_samples_total",
    "Samples read for a voice prompt (PromptSampleService), by where their word timings came from: stored (at "
    "upload, or computed before), computed (a speech-recognition call: a sample stored without them), missing "
    "(speech recognition could not be had).",
    ["word_timings"],
)
UPLOADS_IN_PROGRESS = prometheus_client.Gauge(
    "library_uploads_in_progress", "Voice-sample uploads being worked on (at most LIBRARY_MAX_CONCURRENT_UPLOADS)."
)

# The audio goes to transcode in pieces of this size: one piece at a time is copied into a message
# (and into gRPC's buffer). 256 KiB measured leaner than 1 MiB with four uploads at once.
AUDIO_PIECE_BYTES = 256 * 1024

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"
SCHEMA = "library"
# Every object of the library's is under this prefix, an account's under PREFIX/<account id>/.
PREFIX = "samples/"
MAX_PROMPT_SAMPLES = 8  # asked for at once (BatchGetPromptSamples): a voice prompt has two speakers


async def in_pieces(data: bytes | memoryview) -> AsyncIterator[memoryview]:
    """`data` in views of AUDIO_PIECE_BYTES, copying nothing."""
    view = memoryview(data)
    for start in range(0, len(view), AUDIO_PIECE_BYTES):
        yield view[start : start + AUDIO_PIECE_BYTES]


def sample_keys(account: int) -> tuple[str, str]:
    """New keys for a sample's upload and its WAV: under its account, never used before."""
    folder = f"{PREFIX}{account}/{uuid.uuid4().hex}"
    return f"{folder}/original", f"{folder}/normalized.wav"


def to_proto(row: asyncpg.Record) -> library_pb2.VoiceSample:
    sample = library_pb2.VoiceSample(
        id=row["id"],
        speaker_name=row["speaker_name"],
        transcript=row["transcript"],
        transcript_source=row["transcript_source"],
        is_default=row["is_default"],
        original_format=row["original_format"],
        original_size_bytes=row["original_size_bytes"],
        duration_seconds=row["duration_seconds"],
        visibility=row["visibility"],
        collection=row["collection"],
        warnings=[library_pb2.SampleWarning(**warning) for warning in json.loads(row["warnings"])],
    )
    sample.create_time.FromDatetime(row["create_time"])
    sample.update_time.FromDatetime(row["update_time"])
    return sample


class Library(library_pb2_grpc.LibraryServiceServicer):
    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self.objects = objects.ObjectStore()
        self._sweeper: asyncio.Task | None = None
        self._decode_audio: grpc.aio.StreamUnaryMultiCallable | None = None
        self._transcribe: grpc.aio.UnaryUnaryMultiCallable | None = None
        self._check_sample: grpc.aio.UnaryUnaryMultiCallable | None = None
        self._channels: list[grpc.aio.Channel] = []
        self.uploads = Gate(config.MAX_CONCURRENT_UPLOADS.value, uploads_busy, UPLOADS_IN_PROGRESS)

    # --- Life cycle (hooks of the ServiceSpec) ---------------------------

    async def start(self) -> None:
        """Connect and migrate; until PostgreSQL answers, keep trying (health stays NOT_SERVING)."""
        transcode_channel = clients.service_channel("transcode")
        stt_channel = clients.service_channel("stt")
        self._channels = [transcode_channel, stt_channel]
        # Requests serialized by runtime.wire, and the reply's WAV a view of what was received.
        self._decode_audio = _sending_serialized(
            transcode_channel,
            transcode_pb2.DESCRIPTOR.services_by_name["TranscodeService"].methods_by_name["StreamingDecodeAudio"],
            functools.partial(
                wire.lift_bytes_field, message_class=transcode_pb2.StreamingDecodeAudioResponse, path="wav"
            ),
        )
        self._transcribe = _sending_serialized(
            stt_channel,
            stt_pb2.DESCRIPTOR.services_by_name["SttService"].methods_by_name["Transcribe"],
            stt_pb2.TranscribeResponse.FromString,
        )
        self._check_sample = _sending_serialized(
            stt_channel,
            stt_pb2.DESCRIPTOR.services_by_name["SttService"].methods_by_name["CheckSample"],
            stt_pb2.CheckSampleResponse.FromString,
        )
        while self._pool is None:
            try:
                self._pool = await open_pool(SCHEMA, MIGRATIONS)
            except CONNECTION_ERRORS as error:
                log.warning("database not reachable yet (%s); retrying", type(error).__name__)
                await asyncio.sleep(config.DATABASE_RETRY_SECONDS.value)
        self._sweeper = asyncio.create_task(self._keep_sweeping())

    async def stop(self) -> None:
        await stop_task(self._sweeper)
        await self.objects.close()
        for channel in self._channels:
            await channel.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=5)
            except (asyncio.TimeoutError, *CONNECTION_ERRORS):
                self._pool.terminate()

    async def ready(self) -> bool:
        """PostgreSQL and the object store both answer: no sample can be stored or read without either."""
        if self._pool is None:
            return False
        database, store = await asyncio.gather(is_reachable(self._pool), self.objects.is_reachable())
        return database and store

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:  # a call that arrives before start-up has finished
            raise unavailable()
        return self._pool

    # --- RPCs ------------------------------------------------------------

    async def CreateVoiceSample(self, upload: Upload, context):
        request = upload.request
        fields.refuse_nul(request)  # the server's interceptor checks messages; it sees an Upload here
        account = rules.account_id(context.invocation_metadata())
        key_id = rules.key_id(context.invocation_metadata())
        speaker_name = rules.speaker_name(request.speaker_name)
        transcript = rules.transcript(request.transcript)
        visibility = rules.visibility(request.visibility, empty_means_default=True)
        collection = rules.collection(request.collection)
        with self.uploads.admit():
            audio = rules.audio(upload.audio)

            info, wav = await self._decode(audio)
            transcript_source = "user" if transcript else ""
            # Words timed also under a typed transcript: voice prompts are cut by them.
            heard, warnings = await asyncio.gather(self._recognize(wav), self._check(wav))
            if not transcript and heard is not None:
                transcript = rules.recognized_transcript(heard.text)
                transcript_source = "stt" if transcript else ""

            original_key, normalized_key = sample_keys(account)
            content_type = request.audio.content_type or "application/octet-stream"
            async with self.objects.keeping([original_key, normalized_key]):
                # One after the other, a part (S3_MULTIPART_PART_BYTES) at a time, from views of what was
                # received: an upload holds one part more than its audio and its WAV.
                await self.objects.put_stream(original_key, in_pieces(audio), content_type)
                await self.objects.put_stream(normalized_key, in_pieces(wav), store.WAV)
                row = await store.insert(
                    self.pool,
                    account,
                    store.NewSample(
                        speaker_name=speaker_name,
                        transcript=transcript,
                        transcript_source=transcript_source,
                        is_default=request.is_default,
                        visibility=visibility,
                        collection=collection,
                        original_format=rules.original_format(
                            info.source_format, info.source_codec, request.audio.content_type
                        ),
                        original_key=original_key,
                        original_bytes=len(audio),
                        normalized_key=normalized_key,
                        normalized_bytes=len(wav),
                        duration_seconds=info.duration_seconds,
                        word_timings=None if heard is None else timed_words(heard),
                        warnings=warnings,
                    ),
                    key_id,
                )
        log.info("voice sample stored", extra={"sample_id": row["id"], "account_id": account})
        return library_pb2.CreateVoiceSampleResponse(voice_sample=to_proto(row))

    async def ListVoiceSamples(self, request, context):
        account = rules.account_id(context.invocation_metadata())
        page_size = pagination.page_size(request.page_size)
        after = rules.decode_page_token(request.page_token)
        # One more than asked: whether it exists says if there is a next page.
        rows = await store.list_page(self.pool, account, after, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        next_token = ""
        if more:
            last = page[-1]
            next_token = rules.encode_page_token(rules.Position(last["create_time"], last["id"]))
        return library_pb2.ListVoiceSamplesResponse(
            voice_samples=[to_proto(row) for row in page], next_page_token=next_token
        )

    async def GetVoiceSample(self, request, context):
        account = rules.account_id(context.invocation_metadata())
        row = await store.get(self.pool, account, request.id)
        return library_pb2.GetVoiceSampleResponse(voice_sample=to_proto(row))

    async def GetVoiceSampleAudio(self, request, context):
        account = rules.account_id(context.invocation_metadata())
        stored = await store.get_audio(self.pool, account, request.id)
        wav = stored.legacy if stored.key is None else await self.objects.get(stored.key)
        return library_pb2.GetVoiceSampleAudioResponse(
            audio=httpbody_pb2.HttpBody(content_type=stored.content_type, data=wav)
        )

    async def DownloadVoiceSampleAudio(self, request, context):
        account = rules.account_id(context.invocation_metadata())
        stored = await store.get_audio(self.pool, account, request.id)
        async for piece in downloads.send(stored, self.objects, context):
            yield library_pb2.DownloadVoiceSampleAudioResponse(audio=piece)

    async def UpdateVoiceSample(self, request, context):
        account = rules.account_id(context.invocation_metadata())
        changes: dict[str, str] = {}
        if request.HasField("speaker_name"):
            changes["speaker_name"] = rules.speaker_name(request.speaker_name)
        if request.HasField("transcript"):
            changes["transcript"] = rules.transcript(request.transcript)
            # The user's own words; an emptied transcript has no source.
            changes["transcript_source"] = "user" if changes["transcript"] else ""
        if request.HasField("visibility"):
            changes["visibility"] = rules.visibility(request.visibility, empty_means_default=False)
        if request.HasField("collection"):
            changes["collection"] = rules.collection(request.collection)
        make_default = request.is_default if request.HasField("is_default") else None
        row = await store.update(self.pool, account, request.id, changes, make_default)
        return library_pb2.UpdateVoiceSampleResponse(voice_sample=to_proto(row))

    async def DeleteVoiceSample(self, request, context):
        account = rules.account_id(context.invocation_metadata())
        keys = await store.delete(self.pool, account, request.id)
        await self._delete_objects(keys)
        log.info("voice sample deleted", extra={"sample_id": request.id, "account_id": account})
        return library_pb2.DeleteVoiceSampleResponse()

    async def delete_account(self, account: int) -> tuple[int, int]:
        """Every sample of the account with its objects, and whatever else is stored under its prefix
        (an upload whose row never came): (samples, objects) deleted."""
        count, keys = await store.delete_account(self.pool, account)
        await self._delete_objects(keys)
        leftovers = await self.objects.delete_prefix(f"{PREFIX}{account}/")
        return count, len(keys) + leftovers

    # --- Objects -----------------------------------------------------------

    async def _delete_objects(self, keys: list[str]) -> None:
        """Delete the objects of deleted rows (now, or with the store down, at the sweep)."""
        await self.objects.let_go(keys, functools.partial(store.objects_deleted, self.pool))

    async def sweep(self, grace_seconds: float) -> tuple[int, int]:
        """Delete the objects of deleted rows still waiting, and the objects older than `grace_seconds`
        that no row names; how many of each."""
        waiting = await self.objects.delete_pending(
            functools.partial(store.pending_deletions, self.pool), functools.partial(store.objects_deleted, self.pool)
        )
        orphans = await self.objects.sweep(PREFIX, functools.partial(store.unnamed, self.pool), grace_seconds)
        return waiting, orphans

    async def _keep_sweeping(self) -> None:
        while True:
            await asyncio.sleep(objects.S3_SWEEP_SECONDS.value)
            try:
                await self.sweep(objects.S3_ORPHAN_GRACE_SECONDS.value)
            except ApiError as error:  # the database or the store is down: the next round
                log.info("object sweep skipped", extra={"type": error.reason.lower()})

    # --- Upstream services -----------------------------------------------

    async def _decode(self, audio: bytes | memoryview) -> tuple[transcode_pb2.AudioInfo, memoryview]:
        """What transcode learnt of the upload, and its 44.1 kHz mono WAV (a view of the reply);
        the transcode service's refusals pass through."""
        assert self._decode_audio is not None
        request = transcode_pb2.StreamingDecodeAudioRequest(max_duration_seconds=config.MAX_SAMPLE_SECONDS.value)
        try:
            reply, wav = await self._decode_audio(wire.in_pieces(request, "audio", audio, AUDIO_PIECE_BYTES))
        except grpc.aio.AioRpcError as error:
            raise _transcode_failure(error) from None
        return reply.info, wav

    async def _recognize(self, wav: bytes | memoryview) -> stt_pb2.TranscribeResponse | None:
        """What speech recognition hears, its words timed; None when it cannot be had now."""
        assert self._transcribe is not None
        try:
            return await self._transcribe(
                wire.with_bytes_field(stt_pb2.TranscribeRequest(word_timestamps=True), "audio", wav),
                timeout=config.STT_TIMEOUT_SECONDS.value,
            )
        except grpc.aio.AioRpcError as error:
            # The sample is worth keeping without: the user can type a transcript in later, and its
            # words are timed when a voice prompt first needs them (GetPromptSample).
            log.warning("no transcript from speech recognition", extra={"code": error.code().name})
            return None

    async def _check(self, wav: memoryview) -> list[dict[str, str]]:
        """What the STT service finds may make the sample clone poorly; none when it cannot say now."""
        assert self._check_sample is not None
        try:
            reply = await self._check_sample(
                wire.with_bytes_field(stt_pb2.CheckSampleRequest(), "audio", wav),
                timeout=config.STT_TIMEOUT_SECONDS.value,
            )
        except grpc.aio.AioRpcError as error:
            # Advice only: the sample is stored without it.
            log.warning("no sample check from speech recognition", extra={"code": error.code().name})
            return []
        return [{"code": warning.code, "message": warning.message} for warning in reply.warnings]

    async def prompt_sample(self, account: int, sample_id: int) -> library_pb2.GetPromptSampleResponse:
        """A sample with its audio and word timings, these computed and kept if it was stored without."""
        return await self._prompt_reply(account, await store.prompt_sample(self.pool, account, sample_id))

    async def prompt_samples(self, account: int, sample_ids: list[int]) -> library_pb2.BatchGetPromptSamplesResponse:
        """Several samples as :meth:`prompt_sample` answers each: their rows in one query, their audio
        read at once. A sample the account lacks, or whose audio is gone, is a result not found."""
        found = await store.prompt_samples(self.pool, account, sample_ids)

        async def reply(sample: store.PromptSample) -> library_pb2.GetPromptSampleResponse | None:
            try:
                return await self._prompt_reply(account, sample)
            except objects.ObjectNotFound:  # deleted since its row was read: as GetPromptSample's NOT_FOUND
                return None

        replies = await asyncio.gather(*(reply(sample) for sample in found.values()), return_exceptions=True)
        for answer in replies:
            if isinstance(answer, BaseException):
                raise answer
        by_id = dict(zip(found, replies))
        return library_pb2.BatchGetPromptSamplesResponse(
            results=[
                library_pb2.PromptSampleResult(found=True, sample=by_id[sample_id])
                if by_id.get(sample_id) is not None
                else library_pb2.PromptSampleResult(found=False)
                for sample_id in sample_ids
            ]
        )

    async def _prompt_reply(self, account: int, sample: store.PromptSample) -> library_pb2.GetPromptSampleResponse:
        wav = await self.objects.get(sample.audio.key)
        words = sample.word_timings
        source = "stored"
        if words is None:
            heard = await self._recognize(wav)
            source = "missing" if heard is None else "computed"
            if heard is not None:
                words = timed_words(heard)
                await store.set_word_timings(self.pool, account, sample.id, words)
        PROMPT_SAMPLES.labels(source).inc()
        reply = library_pb2.GetPromptSampleResponse(
            id=sample.id,
            transcript=sample.transcript,
            duration_seconds=sample.duration_seconds,
            wav=bytes(wav),
            words_timed=words is not None,
            words=[library_pb2.TimedWord(start_seconds=s, end_seconds=e, text=t) for s, e, t in words or ()],
        )
        reply.update_time.FromDatetime(sample.update_time)
        return reply


def timed_words(heard: stt_pb2.TranscribeResponse) -> list[tuple[float, float, str]]:
    return [(word.start_seconds, word.end_seconds, word.text) for segment in heard.segments for word in segment.words]


class PromptSamples(library_pb2_grpc.PromptSampleServiceServicer):
    """Samples as synth providers make voice prompts of them (internal: no HTTP route), read as the
    account the gateway vouched for in the synthesis request."""

    def __init__(self, library: Library) -> None:
        self.library = library

    async def GetPromptSample(self, request, context):
        return await self.library.prompt_sample(rules.account_number(request.account_id), request.id)

    async def BatchGetPromptSamples(self, request, context):
        account = rules.account_number(request.account_id)
        if not 1 <= len(request.ids) <= MAX_PROMPT_SAMPLES:
            raise invalid_parameter("ids", f"ask for 1 to {MAX_PROMPT_SAMPLES} samples, not {len(request.ids)}")
        return await self.library.prompt_samples(account, list(request.ids))


class AccountData(library_pb2_grpc.AccountDataServiceServicer):
    """What the library keeps of each account as a whole, for the gateway (internal: no HTTP route)."""

    def __init__(self, library: Library) -> None:
        self.library = library

    async def DeleteAccountSamples(self, request, context):
        account = rules.account_number(request.account_id)
        samples, objects = await self.library.delete_account(account)
        log.warning("account's voice samples deleted", extra={"account_id": account, "samples": samples, "objects": objects})
        return library_pb2.DeleteAccountSamplesResponse(deleted_samples=samples, deleted_objects=objects)

    async def GetSampleUsage(self, request, context):
        account = rules.account_number(request.account_id)
        start = rules.utc_day(request.start_date, "start_date")
        end = rules.utc_day(request.end_date, "end_date")
        days, stored = await store.usage(self.library.pool, account, start, end)
        return library_pb2.GetSampleUsageResponse(
            days=[
                library_pb2.SampleUsage(date=row["day"].isoformat(), key_id=row["key_id"], samples=row["samples"], bytes=row["bytes"])
                for row in days
            ],
            stored_samples=stored["samples"],
            stored_bytes=stored["bytes"],
        )


@dataclass(frozen=True)
class Upload:
    """A CreateVoiceSampleRequest as received: the message without its audio's bytes, and those
    bytes as a view of the received message, not copies of them (runtime.wire)."""

    request: library_pb2.CreateVoiceSampleRequest
    audio: memoryview

    @classmethod
    def received(cls, serialized: bytes) -> "Upload":
        return cls(*wire.lift_bytes_field(serialized, library_pb2.CreateVoiceSampleRequest, "audio.data"))


def _sending_serialized(
    channel: grpc.aio.Channel, method: descriptor.MethodDescriptor, response_deserializer
) -> grpc.aio.UnaryUnaryMultiCallable | grpc.aio.StreamUnaryMultiCallable:
    """A call of `method` that takes its request (or, for a client stream, each one) serialized."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    make = channel.stream_unary if method.client_streaming else channel.unary_unary
    return make(path, request_serializer=None, response_deserializer=response_deserializer)


class _Handlers:
    """Stands in for a server to catch the handlers a generated add_*_to_server function makes."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


def add_to_server(library: Library, server) -> None:
    """The generated registration of the LibraryService, but CreateVoiceSample receives an Upload."""
    generated = _Handlers()
    library_pb2_grpc.add_LibraryServiceServicer_to_server(library, generated)
    handlers = dict(generated.handlers)
    handlers["CreateVoiceSample"] = handlers["CreateVoiceSample"]._replace(request_deserializer=Upload.received)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(generated.service, handlers),))
    server.add_registered_method_handlers(generated.service, handlers)


def uploads_busy(uploading: int, retry_after: float) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPLOADS_BUSY",
        f"the library is working on {uploading} uploads, the most it takes at once; try again shortly",
        retry_after=retry_after,
    )


def _transcode_failure(error: grpc.aio.AioRpcError) -> ApiError:
    """What the client hears when the transcode service refuses or fails an upload."""
    upstream = ApiError.from_rpc_error(error)
    if upstream.code == grpc.StatusCode.INVALID_ARGUMENT:
        if upstream.reason == "AUDIO_TOO_LARGE":  # transcode's own byte limit: same meaning as ours
            return ApiError(upstream.code, "REQUEST_TOO_LARGE", upstream.message, param="audio")
        return upstream  # AUDIO_DECODE_FAILED, AUDIO_TOO_LONG: the user's to fix
    if upstream.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return upstream  # busy: the client may retry later
    log.error("transcode failed: %s %s", upstream.code.name, upstream.message)
    if upstream.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ApiError(
            grpc.StatusCode.UNAVAILABLE,
            "UNAVAILABLE",
            "audio conversion is unavailable right now; nothing was stored, try again shortly",
        )
    return ApiError(
        grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR", "audio conversion failed; nothing was stored"
    )


# What the library publishes (runtime/limits.py): its protos name the lengths, so that the
# gateway documents the library's own values in /openapi.json.
LIMITS = {
    "speaker_name_chars": config.MAX_SPEAKER_NAME_CHARS,
    "transcript_chars": config.MAX_TRANSCRIPT_CHARS,
    "collection_chars": config.MAX_COLLECTION_CHARS,
    "upload_bytes": config.MAX_UPLOAD_BYTES,
    "sample_seconds": config.MAX_SAMPLE_SECONDS,
}


def build_spec() -> ServiceSpec:
    library = Library()
    return ServiceSpec(
        name="library",
        servicers=[
            Servicer(
                add_to_server,
                library,
                "voice.library.v1.LibraryService",
            ),
            Servicer(
                library_pb2_grpc.add_AccountDataServiceServicer_to_server,
                AccountData(library),
                "voice.library.v1.AccountDataService",
            ),
            Servicer(
                library_pb2_grpc.add_PromptSampleServiceServicer_to_server,
                PromptSamples(library),
                "voice.library.v1.PromptSampleService",
            ),
        ],
        on_start=library.start,
        on_stop=library.stop,
        readiness=library.ready,
        readiness_interval_seconds=config.READINESS_INTERVAL_SECONDS.value,
        limits=LIMITS,
    )
