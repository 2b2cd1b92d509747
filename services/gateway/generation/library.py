"""The library service as the generation domain needs it: the caller's voice samples.

Every call is made as the caller's account (``x-account-id``), so the
library answers with that account's samples only: another account's sample
is as unknown as a made-up id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import grpc
from google.api import httpbody_pb2

from runtime import callers, clients
from runtime.errors import ApiError, invalid_argument
from voice.library.v1 import library_pb2, library_pb2_grpc

# The library's largest page: the fewest calls to look through it.
PAGE_SIZE = 100


@dataclass(frozen=True)
class Sample:
    """A cloned speaker's voice sample as the library describes it (its audio the synth provider fetches itself)."""

    speaker: str  # "S1" or "S2"
    sample_id: int
    speaker_name: str
    transcript: str
    duration_seconds: float
    version: int  # the sample's update time in nanoseconds: a changed sample has a new one


T = TypeVar("T")


async def in_order(calls: list[Awaitable[T]]) -> list[T]:
    """Run the calls at once; if any fail, raise the error of the first in order (S1's before S2's)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class Library:
    def __init__(self) -> None:
        self.channel: grpc.aio.Channel | None = None

    def start(self) -> None:
        self.channel = clients.service_channel("library")

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    def _stub(self) -> library_pb2_grpc.LibraryServiceStub:
        assert self.channel is not None, "the library client has not started"
        return library_pb2_grpc.LibraryServiceStub(self.channel)

    @staticmethod
    def _as(account_id: int, key_id: int = 0) -> tuple:
        """The metadata of a call as the account (and, for what the library meters, the key's number)."""
        metadata: tuple = ((clients.ACCOUNT_ID_METADATA, str(account_id)),)
        if key_id:
            metadata += ((callers.KEY_ID_METADATA, str(key_id)),)
        return metadata

    async def samples(self, account_id: int, speakers: dict[str, int]) -> list[Sample]:
        """The caller's samples for the speakers, in the given order; INVALID_VOICE_SAMPLE or MISSING_TRANSCRIPT."""

        async def fetch(speaker: str, sample_id: int) -> Sample:
            param = f"speakers.{speaker}"
            try:
                reply = await self._stub().GetVoiceSample(
                    library_pb2.GetVoiceSampleRequest(id=sample_id), metadata=self._as(account_id)
                )
            except grpc.aio.AioRpcError as error:
                raise _not_yours(error, param, sample_id) from None
            found = reply.voice_sample
            if not found.transcript.strip():
                raise invalid_argument(
                    "MISSING_TRANSCRIPT",
                    f"{param}: voice sample {sample_id} has no transcript, and Dia needs what is said in a "
                    "sample to clone its voice; add one to the sample",
                    param,
                )
            return Sample(
                speaker, sample_id, found.speaker_name, found.transcript, found.duration_seconds,
                found.update_time.ToNanoseconds(),
            )  # fmt: skip

        return await in_order([fetch(speaker, sample_id) for speaker, sample_id in speakers.items()])

    async def audio(self, account_id: int, samples: list[Sample]) -> list[bytes]:
        """The samples' WAVs, in the given order: what a generation's analysis compares each voice with
        (voice prompts are not made here: synth fetches what it needs itself)."""

        async def fetch(sample: Sample) -> bytes:
            try:
                reply = await self._stub().GetVoiceSampleAudio(
                    library_pb2.GetVoiceSampleAudioRequest(id=sample.sample_id), metadata=self._as(account_id)
                )
            except grpc.aio.AioRpcError as error:  # deleted since it was described
                raise _not_yours(error, f"speakers.{sample.speaker}", sample.sample_id) from None
            return reply.audio.data

        return await in_order([fetch(sample) for sample in samples])

    async def exists(self, account_id: int, sample_id: int) -> bool:
        """Whether the caller has this sample (False for another account's, as for a made-up id)."""
        try:
            await self._stub().GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=sample_id), metadata=self._as(account_id))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise ApiError.from_rpc_error(error) from None
            return False
        return True

    async def newest(
        self, account_id: int, wanted: Callable[[library_pb2.VoiceSample], bool]
    ) -> library_pb2.VoiceSample | None:
        """The caller's newest sample that is `wanted`, paging through the library (newest first)."""
        async for sample in self.every(account_id):
            if wanted(sample):
                return sample
        return None

    async def every(self, account_id: int, most: int | None = None):
        """The caller's samples, newest first (at most `most`)."""
        token, count = "", 0
        while True:
            page = await self._stub().ListVoiceSamples(
                library_pb2.ListVoiceSamplesRequest(page_size=PAGE_SIZE, page_token=token), metadata=self._as(account_id)
            )
            for sample in page.voice_samples:
                yield sample
                count += 1
                if most is not None and count >= most:
                    return
            token = page.next_page_token
            if not token:
                return

    async def create(
        self, account_id: int, audio: bytes, content_type: str, speaker_name: str, collection: str, key_id: int = 0
    ) -> library_pb2.VoiceSample:
        """A new sample of the caller's (transcribed by the library's speech recognition), stored as usage
        of the key `key_id`."""
        created = await self._stub().CreateVoiceSample(
            library_pb2.CreateVoiceSampleRequest(
                audio=httpbody_pb2.HttpBody(content_type=content_type, data=audio),
                speaker_name=speaker_name,
                collection=collection,
            ),
            metadata=self._as(account_id, key_id),
        )
        return created.voice_sample

    # --- the account as a whole (AccountDataService) ------------------------------

    def _accounts_stub(self) -> library_pb2_grpc.AccountDataServiceStub:
        assert self.channel is not None, "the library client has not started"
        return library_pb2_grpc.AccountDataServiceStub(self.channel)

    async def delete_account_samples(self, account_id: int) -> library_pb2.DeleteAccountSamplesResponse:
        """Delete every sample of the account, with its audio in storage and the library's usage records
        of it (an account's erasure): how many samples and objects. The library's errors (UNAVAILABLE)
        are raised as ApiErrors."""
        try:
            return await self._accounts_stub().DeleteAccountSamples(
                library_pb2.DeleteAccountSamplesRequest(account_id=account_id)
            )
        except grpc.aio.AioRpcError as error:
            raise ApiError.from_rpc_error(error) from None

    async def sample_usage(self, account_id: int, start_date: str, end_date: str) -> library_pb2.GetSampleUsageResponse:
        """What the account stored each day of the range (by key), and what it keeps now."""
        try:
            return await self._accounts_stub().GetSampleUsage(
                library_pb2.GetSampleUsageRequest(account_id=account_id, start_date=start_date, end_date=end_date)
            )
        except grpc.aio.AioRpcError as error:
            raise ApiError.from_rpc_error(error) from None


def _not_yours(error: grpc.aio.AioRpcError, param: str, sample_id: int) -> BaseException:
    if error.code() == grpc.StatusCode.NOT_FOUND:  # also another account's sample
        return invalid_argument(
            "INVALID_VOICE_SAMPLE", f"{param}: there is no voice sample {sample_id} in your library", param
        )
    return error
