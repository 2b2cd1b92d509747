"""Which synth provider serves a generation, and the call to it.

The candidates are the online providers (see registry.py) serving the model
asked for, or, when none is named, any model of theirs with the
``voice-cloning`` feature. The least loaded goes first: its load over its
capacity, where the load is the larger of what it last reported and the
requests this gateway has in flight there (a heartbeat is seconds old, and
the requests sent since are not in it). Ties are broken at random, so equal
providers share the work. A provider that could not be reached since its
last heartbeat goes last: it is probably gone, and its heartbeats stop
before the registry can tell.

A generation with cloned voices goes first to the provider its voices belong
to, when that one is not much busier: every provider caches the codec codes
of the voice prompts it encoded, so sending the same voices to the same
provider encodes them once instead of once per provider. Which provider the
voices belong to is decided by rendezvous (highest-random-weight) hashing of
their identity, the samples' ids and versions in speaker order, weighted by
capacity: every gateway replica agrees without talking, a provider that leaves
hands on only its own voices, and one that joins takes its share of the
voices from the others and moves no other. When that provider has more than
GATEWAY_VOICE_AFFINITY_SLACK requests in flight beyond the least loaded, the
least loaded goes first instead (``gateway_voice_routing_total`` counts both
decisions); GATEWAY_VOICE_AFFINITY=false routes every generation by load.

A provider that fails before producing audio (unreachable, connection reset,
model still loading: UNAVAILABLE; busy: RESOURCE_EXHAUSTED) is retried once
on another provider. When every provider tried was busy, the caller gets 429
synth_busy: nothing failed, and trying again shortly will work, after the
soonest Retry-After (RetryInfo) the busy providers estimated. The
provider's refusal of the request itself (INVALID_ARGUMENT, e.g. a script too
long for the model) reaches the caller as it is; any other failure is 502
upstream_error, saying which provider failed and how, in words: gRPC's own
text of a failure names internal addresses, so it goes to the log only.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Iterable, Mapping

import grpc
import prometheus_client

from runtime import clients
from runtime.errors import ApiError
from services.gateway.config import VOICE_AFFINITY, VOICE_AFFINITY_SLACK
from services.gateway.generation import registry
from services.gateway.generation.library import Sample
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

log = logging.getLogger("gateway.routing")

VOICE_CLONING = "voice-cloning"
# Statuses that say the provider did not take the request on: another may.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
# The first provider and one retry.
MAX_ATTEMPTS = 2
# A provider's parameter names that are called otherwise in the public API.
PUBLIC_PARAMS = {"script": "input", "audio_prompt": "speakers"}
# How a provider's failure is told to the caller (the details go to the log).
FAILURES = {
    grpc.StatusCode.UNAVAILABLE: "could not be reached",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "was busy",
    grpc.StatusCode.DEADLINE_EXCEEDED: "did not answer in time",
}

VOICE_ROUTING = prometheus_client.Counter(
    "gateway_voice_routing_total",
    "Requests with cloned voices sent to synth providers (a long script's chunks each), by how the provider "
    "was chosen: affinity (the provider their voices belong to, which most likely holds their codes) or "
    "fallback (the least loaded, as that one was busier by more than GATEWAY_VOICE_AFFINITY_SLACK).",
    ["decision"],
)


@dataclass(frozen=True)
class VoiceAffinity:
    """Whether generations follow their voices to a provider, and how much busier that one may be."""

    on: bool = True
    slack: int = 2  # requests in flight beyond the least loaded provider's

    @classmethod
    def configured(cls) -> "VoiceAffinity":
        return cls(VOICE_AFFINITY.value, VOICE_AFFINITY_SLACK.value)


@dataclass(frozen=True)
class ModelLimits:
    """What a provider's model holds, as it publishes them (Dia-1.6B's for one that does not)."""

    decoder_positions: int = 3072  # decoder positions: the prompt's frames and the new ones together
    text_window_bytes: int = 1024  # text the model reads at once, the prompt's transcript included
    sample_rate: int = 44100
    samples_per_frame: int = 512

    @classmethod
    def published(cls, limits: Mapping | None) -> "ModelLimits":
        known = {name: int(value) for name, value in (limits or {}).items() if name in cls.__dataclass_fields__ and value}
        return cls(**known)

    @classmethod
    def of_all(cls, found: Iterable["Candidate"]) -> "ModelLimits":
        """The limits every one of the candidates can hold (the smallest of each)."""
        each = [candidate.limits for candidate in found]
        return cls(
            min(limits.decoder_positions for limits in each),
            min(limits.text_window_bytes for limits in each),
            each[0].sample_rate,
            each[0].samples_per_frame,
        )


@dataclass(frozen=True)
class Candidate:
    provider_id: str
    address: str
    model: str  # the model of this provider that serves the request
    capacity: int
    load: int
    last_seen: datetime.datetime
    limits: ModelLimits = ModelLimits()


def candidates(rows: Iterable[Mapping], model: str) -> list[Candidate]:
    """The providers that can serve `model` ("" for any voice-cloning model); NO_PROVIDER if none."""
    found: list[Candidate] = []
    served_without_cloning = False
    for row in rows:
        for offered in json.loads(row["models"]):
            if model and offered["id"] != model:
                continue
            if VOICE_CLONING not in offered["features"]:
                served_without_cloning = served_without_cloning or bool(model)
                continue
            found.append(
                Candidate(
                    row["provider_id"], row["address"], offered["id"], row["capacity"], row["load"], row["last_seen"],
                    ModelLimits.published(offered.get("limits")),
                )  # fmt: skip
            )
            break  # one model per provider is enough
    if not found:
        raise no_provider(model, served_without_cloning)
    return found


def no_provider(model: str, served_without_cloning: bool = False) -> ApiError:
    if served_without_cloning:
        message = f"model {model!r} has no voice-cloning feature; pick one that has from GET /v1/models"
    elif model:
        message = f"no online provider serves model {model!r}; GET /v1/models lists the models available now"
    else:
        message = "no online provider offers a voice-cloning model right now; try again later"
    return ApiError(grpc.StatusCode.NOT_FOUND, "NO_PROVIDER", message, param="model" if model else None)


def load_of(candidate: Candidate, in_flight: Mapping[str, int]) -> int:
    """Requests on the provider: what it last reported, or what this gateway has sent it since, if more."""
    return max(candidate.load, in_flight.get(candidate.provider_id, 0))


def unreachable(candidate: Candidate, unreachable_since: Mapping[str, datetime.datetime]) -> bool:
    """Whether it could not be reached after its latest heartbeat (a newer heartbeat clears that)."""
    return unreachable_since.get(candidate.provider_id) == candidate.last_seen


def ranked(
    found: list[Candidate],
    in_flight: Mapping[str, int],
    unreachable_since: Mapping[str, datetime.datetime],
    rng: random.Random,
) -> list[Candidate]:
    """The order to try the candidates in: reachable before unreachable, then least loaded first."""

    def key(candidate: Candidate) -> tuple:
        load = load_of(candidate, in_flight)
        busy = load / candidate.capacity if candidate.capacity > 0 else math.inf
        return (unreachable(candidate, unreachable_since), busy, rng.random())

    return sorted(found, key=key)


def voices_key(samples: Iterable[Sample]) -> str:
    """The identity of a generation's cloned voices ("" for none): what their prompt's codes depend on."""
    return " ".join(f"{sample.speaker}:{sample.sample_id}@{sample.version}" for sample in samples)


def rendezvous_weight(candidate: Candidate, voices: str) -> float:
    """The candidate's claim to the voices: the highest claim holds them. A hash of both as a number u in
    (0, 1), made -capacity / ln(u) so that a provider's share of all voices follows its capacity."""
    digest = hashlib.blake2b(f"{candidate.provider_id}\n{voices}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return candidate.capacity / -math.log(unit)


def holder(found: Iterable[Candidate], voices: str) -> Candidate:
    """The candidate the voices belong to."""
    return max(found, key=lambda candidate: rendezvous_weight(candidate, voices))


def following_voices(
    order: list[Candidate],
    voices: str,
    in_flight: Mapping[str, int],
    unreachable_since: Mapping[str, datetime.datetime],
    slack: int,
) -> tuple[list[Candidate], str]:
    """`order` (least loaded first, as ranked) with the reachable provider the voices belong to moved first,
    unless it has more than `slack` requests beyond the first's; and which it was, affinity or fallback."""
    reachable = [candidate for candidate in order if not unreachable(candidate, unreachable_since)]
    preferred = holder(reachable or order, voices)
    if load_of(preferred, in_flight) - load_of(order[0], in_flight) > slack:
        return order, "fallback"
    return [preferred, *(candidate for candidate in order if candidate is not preferred)], "affinity"


def upstream_error(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR", message)


def public_error(candidate: Candidate, error: grpc.aio.AioRpcError, timeout: float) -> ApiError:
    """What the caller sees of a provider's failure that is not retried."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        refusal = ApiError.from_rpc_error(error)
        if refusal.param:
            # A field of the SynthesisSpec, named from the request ("synthesis.script") or from the spec.
            head = refusal.param.removeprefix("synthesis.").split(".")[0]
            refusal.param = PUBLIC_PARAMS.get(head, refusal.param)
        return refusal
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return upstream_error(f"the provider {candidate.provider_id} did not finish the generation within {round(timeout, 2):g} s")
    log.warning(
        "provider failed the generation",
        extra={"provider": candidate.provider_id, "code": error.code().name, "details": error.details()},
    )
    return upstream_error(f"the provider {candidate.provider_id} failed the generation ({_failure(error)})")


def _failure(error: grpc.aio.AioRpcError) -> str:
    return FAILURES.get(error.code(), f"error {error.code().name.lower()}")


OnAttempt = Callable[[Candidate], Awaitable[None]]


class Router:
    """Picks providers and calls them; one per gateway process."""

    def __init__(
        self,
        providers: registry.ProviderDirectory,
        rng: random.Random | None = None,
        affinity: VoiceAffinity | None = None,
    ) -> None:
        self.providers = providers
        self.rng = rng or random.Random()
        self.affinity = affinity or VoiceAffinity.configured()
        self.in_flight: collections.Counter[str] = collections.Counter()
        # provider id → the last_seen of the heartbeat after which it could not be reached
        self.unreachable_since: dict[str, datetime.datetime] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def candidates(self, model: str) -> list[Candidate]:
        """The online providers that can serve `model` ("" for any voice-cloning model); NO_PROVIDER if none."""
        return candidates(await self.providers.online(), model)

    async def synthesize(
        self,
        synthesis: synth_pb2.SynthesisSpec,
        found: list[Candidate],
        timeout: float,
        on_attempt: OnAttempt,
        voices: str = "",
    ) -> tuple[Candidate, synth_pb2.SynthesizeResponse]:
        """Generate on the best of the `found` candidates, or on a second one if the first did not take
        the request.

        `timeout` bounds every attempt together; `on_attempt` runs before each. `voices` (voices_key)
        names the cloned voices the request's prompt is made of, "" for none.
        """
        return await self._attempts(
            found, timeout, on_attempt, lambda c, remaining: self._call(c, synthesis, remaining), voices
        )

    async def stream_synthesize(
        self,
        synthesis: synth_pb2.SynthesisSpec,
        found: list[Candidate],
        timeout: float,
        on_attempt: OnAttempt,
        voices: str = "",
    ) -> AsyncIterator[tuple[Candidate, synth_pb2.StreamSynthesizeResponse]]:
        """As synthesize, streamed: the provider's messages as they come. A provider that fails before
        its first message is retried on another as synthesize does; after it, its error ends the stream."""

        async def first_of(candidate: Candidate, remaining: float):
            stub = synth_pb2_grpc.SynthServiceStub(self._channel(candidate.address))
            synthesis.model = candidate.model
            # In flight from the request on, as in _call: a stream queued at the provider is load too.
            self.in_flight[candidate.provider_id] += 1
            call = stub.StreamSynthesize(synth_pb2.StreamSynthesizeRequest(synthesis=synthesis), timeout=remaining)
            try:
                first = await call.read()
            except BaseException:
                self.in_flight[candidate.provider_id] -= 1
                call.cancel()
                raise
            return call, first

        candidate, (call, first) = await self._attempts(found, timeout, on_attempt, first_of, voices)
        try:
            message = first
            while message is not grpc.aio.EOF:
                yield candidate, message
                message = await call.read()
        except grpc.aio.AioRpcError as error:
            raise public_error(candidate, error, timeout) from None
        finally:
            self.in_flight[candidate.provider_id] -= 1
            call.cancel()  # the caller went away (or the stream ended): stop the provider's generation

    def order(self, found: list[Candidate], voices: str = "") -> list[Candidate]:
        """The order to try the `found` candidates in, for a request of the `voices` ("" for none)."""
        order = ranked(found, self.in_flight, self.unreachable_since, self.rng)
        if voices and self.affinity.on:
            order, decision = following_voices(
                order, voices, self.in_flight, self.unreachable_since, self.affinity.slack
            )
            VOICE_ROUTING.labels(decision).inc()
        return order

    async def _attempts(
        self, found: list[Candidate], timeout: float, on_attempt: OnAttempt, attempt, voices: str
    ) -> tuple[Candidate, object]:
        """The first (candidate, answer) of `attempt(candidate, remaining seconds)` that succeeds, trying
        the best provider and one more; raises what the caller should see when none does."""
        order = self.order(found, voices)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        failures = []
        codes = set()
        retry_after: list[float] = []  # the busy providers' estimates
        for candidate in order[:MAX_ATTEMPTS]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await on_attempt(candidate)
            try:
                answer = await attempt(candidate, remaining)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    raise public_error(candidate, error, timeout) from None
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    self.unreachable_since[candidate.provider_id] = candidate.last_seen
                log.warning(
                    "provider did not take the generation",
                    extra={"provider": candidate.provider_id, "code": error.code().name, "details": error.details()},
                )
                failures.append(f"{candidate.provider_id} {_failure(error)}")
                codes.add(error.code())
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    estimate = ApiError.from_rpc_error(error).retry_after
                    retry_after += [] if estimate is None else [estimate]
                continue
            return candidate, answer
        if codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "SYNTH_BUSY",
                "every synth provider is busy; try again in a few seconds",
                retry_after=min(retry_after, default=None),
            )
        if not failures:
            raise upstream_error(f"no provider finished the generation within {round(timeout, 2):g} s")
        raise upstream_error("no provider could take the generation (" + "; ".join(failures) + ")")

    async def _call(
        self, candidate: Candidate, synthesis: synth_pb2.SynthesisSpec, timeout: float
    ) -> synth_pb2.SynthesizeResponse:
        synthesis.model = candidate.model
        stub = synth_pb2_grpc.SynthServiceStub(self._channel(candidate.address))
        self.in_flight[candidate.provider_id] += 1
        try:
            return await stub.Synthesize(synth_pb2.SynthesizeRequest(synthesis=synthesis), timeout=timeout)
        finally:
            self.in_flight[candidate.provider_id] -= 1

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = clients.channel(address)
        return self._channels[address]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
