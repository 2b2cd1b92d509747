"""Provider routing as units: which providers are candidates, in which order
they are tried, and what a failure of each kind becomes. The providers of the
retry tests are small gRPC servers in this process that answer as a synth
provider can (audio, busy, a refusal, a crash) or addresses where nothing
listens, as a killed one; the end-to-end tests with real synth processes are
in test_generation_failover.py."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random

import grpc
import pytest

from runtime.errors import ApiError
from services.gateway.generation.routing import Candidate, Router, candidates, ranked
from tests.conftest import free_port
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
CLONING = ["voice-cloning", "dialogue"]


def row(provider_id: str, *models: tuple[str, list[str]], address: str = "127.0.0.1:1", capacity=4, load=0) -> dict:
    listed = [{"id": model_id, "features": features} for model_id, features in models]
    return dict(provider_id=provider_id, address=address, models=json.dumps(listed), capacity=capacity, load=load, last_seen=NOW)


def reason_and_param(call) -> tuple[str, str | None]:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value.reason, caught.value.param


# --- candidates ---------------------------------------------------------------------


def test_a_named_model_is_served_by_the_providers_that_have_it():
    rows = [row("a", ("dia", CLONING)), row("b", ("other", CLONING)), row("c", ("dia", CLONING))]
    assert [(c.provider_id, c.model) for c in candidates(rows, "dia")] == [("a", "dia"), ("c", "dia")]


def test_without_a_model_any_voice_cloning_model_will_do():
    rows = [row("a", ("speech-only", ["dialogue"])), row("b", ("speech-only", ["dialogue"]), ("dia", CLONING))]
    assert [(c.provider_id, c.model) for c in candidates(rows, "")] == [("b", "dia")]


def test_no_candidate_is_no_provider_saying_why():
    rows = [row("a", ("speech-only", ["dialogue"]))]
    assert reason_and_param(lambda: candidates(rows, "")) == ("NO_PROVIDER", None)
    assert reason_and_param(lambda: candidates(rows, "dia")) == ("NO_PROVIDER", "model")
    with pytest.raises(ApiError) as caught:
        candidates(rows, "speech-only")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "no voice-cloning feature" in caught.value.message
    with pytest.raises(ApiError) as caught:
        candidates([], "dia")
    assert "'dia'" in caught.value.message


# --- order ----------------------------------------------------------------------


def candidate(provider_id: str, load: int, capacity: int = 4, address: str = "127.0.0.1:1") -> Candidate:
    return Candidate(provider_id, address, "dia", capacity, load, NOW)


def order(found, in_flight=None, unreachable=None, seed=0) -> list[str]:
    return [c.provider_id for c in ranked(found, in_flight or {}, unreachable or {}, random.Random(seed))]


def test_the_least_loaded_for_its_capacity_goes_first():
    found = [candidate("busy", 3, 4), candidate("idle", 1, 4), candidate("big", 4, 16), candidate("none", 0, 0)]
    assert order(found) == ["big", "idle", "busy", "none"]


def test_requests_in_flight_since_the_last_heartbeat_count_as_load():
    found = [candidate("a", 0), candidate("b", 1)]
    assert order(found, in_flight={"a": 2}) == ["b", "a"]


def test_ties_are_broken_at_random():
    found = [candidate("a", 1), candidate("b", 1)]
    firsts = {order(found, seed=seed)[0] for seed in range(20)}
    assert firsts == {"a", "b"}


def test_a_provider_unreachable_since_its_last_heartbeat_goes_last_until_the_next():
    found = [candidate("gone", 0), candidate("busy", 3)]
    assert order(found, unreachable={"gone": NOW}) == ["busy", "gone"]
    earlier = NOW - datetime.timedelta(seconds=5)
    assert order(found, unreachable={"gone": earlier}) == ["gone", "busy"]


# --- calling, and retrying on another ----------------------------------------------


class Provider(synth_pb2_grpc.SynthServiceServicer):
    """A stand-in provider answering with `outcome`: "audio", "slow", or a status code to fail with."""

    def __init__(self, outcome) -> None:
        self.outcome = outcome
        self.calls = 0
        self.retry_after: float | None = None  # the RetryInfo of its failure

    async def Synthesize(self, request, context):
        self.calls += 1
        if self.outcome == "audio":
            return synth_pb2.SynthesizeResponse(wav=b"RIFF", model=request.synthesis.model, seed=1)
        if self.outcome == "slow":
            await asyncio.sleep(30)
        status = ApiError(
            self.outcome, "INVALID_PARAMETER", "refused", param="script", retry_after=self.retry_after
        ).to_status()
        await context.abort_with_status(status)


@pytest.fixture
async def providers():
    """Start stand-in providers by outcome; returns (rows for the registry, servicers)."""
    servers = []

    async def start(*outcomes) -> tuple[list[dict], list[Provider]]:
        rows, servicers = [], []
        for index, outcome in enumerate(outcomes):
            port = free_port()
            servicer = Provider(outcome)
            if outcome != "dead":  # a killed provider: nothing listens at its address
                server = grpc.aio.server()
                synth_pb2_grpc.add_SynthServiceServicer_to_server(servicer, server)
                server.add_insecure_port(f"127.0.0.1:{port}")
                await server.start()
                servers.append(server)
            # The first is the least loaded: it is tried first.
            rows.append(row(f"p{index}", ("dia", CLONING), address=f"127.0.0.1:{port}", load=index))
            servicers.append(servicer)
        return rows, servicers

    yield start
    for server in servers:
        await server.stop(0)


async def route(monkeypatch, rows, timeout: float = 10) -> tuple[str, list[str]]:
    """Synthesize through a Router over `rows`; the provider that answered and those tried."""

    class Listed:  # the providers table, as the registry reads it
        async def online(self):
            return rows

    router = Router(Listed(), random.Random(0))
    tried = []

    async def on_attempt(found: Candidate) -> None:
        tried.append(found.provider_id)

    try:
        found = await router.candidates("")
        answered, reply = await router.synthesize(synth_pb2.SynthesisSpec(script="[S1] Hi."), found, timeout, on_attempt)
        assert reply.model == "dia"  # the provider is asked for the model it was picked for
        return answered.provider_id, tried
    finally:
        await router.close()


async def failure(monkeypatch, rows, timeout: float = 10) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await route(monkeypatch, rows, timeout)
    return caught.value


async def test_the_first_provider_answers(monkeypatch, providers):
    rows, _ = await providers("audio", "audio")
    assert await route(monkeypatch, rows) == ("p0", ["p0"])


@pytest.mark.parametrize("first", ["dead", grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
async def test_a_provider_that_did_not_take_the_request_is_retried_on_another(monkeypatch, providers, first):
    rows, _ = await providers(first, "audio")
    assert await route(monkeypatch, rows) == ("p1", ["p0", "p1"])


async def test_two_providers_that_do_not_take_it_are_upstream_error(monkeypatch, providers):
    rows, servicers = await providers("dead", grpc.StatusCode.RESOURCE_EXHAUSTED, "audio")
    error = await failure(monkeypatch, rows)
    assert (error.reason, error.param) == ("UPSTREAM_ERROR", None)
    assert "p0" in error.message and "p1" in error.message
    assert servicers[2].calls == 0  # one retry, no more


async def test_when_every_provider_tried_is_busy_the_caller_may_retry(monkeypatch, providers):
    busy = grpc.StatusCode.RESOURCE_EXHAUSTED
    rows, _ = await providers(busy, busy)
    error = await failure(monkeypatch, rows)
    assert (error.code, error.reason) == (busy, "SYNTH_BUSY")  # 429, not a provider failure


async def test_when_every_provider_is_busy_the_soonest_retry_after_passes_on(monkeypatch, providers):
    busy = grpc.StatusCode.RESOURCE_EXHAUSTED
    rows, servicers = await providers(busy, busy)
    servicers[0].retry_after, servicers[1].retry_after = 7.0, 3.0
    error = await failure(monkeypatch, rows)
    assert (error.reason, error.retry_after) == ("SYNTH_BUSY", 3.0)


async def test_a_lone_provider_that_is_gone_is_upstream_error(monkeypatch, providers):
    rows, _ = await providers("dead")
    assert (await failure(monkeypatch, rows)).reason == "UPSTREAM_ERROR"


async def test_a_providers_refusal_of_the_request_passes_on_in_public_names(monkeypatch, providers):
    rows, servicers = await providers(grpc.StatusCode.INVALID_ARGUMENT, "audio")
    error = await failure(monkeypatch, rows)
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "input")
    assert servicers[1].calls == 0  # another provider would refuse it as well


async def test_a_provider_that_fails_otherwise_is_upstream_error_without_retry(monkeypatch, providers):
    rows, servicers = await providers(grpc.StatusCode.INTERNAL, "audio")
    error = await failure(monkeypatch, rows)
    assert error.reason == "UPSTREAM_ERROR" and "p0" in error.message
    assert servicers[1].calls == 0  # it may have generated already: not done twice


async def test_a_provider_past_the_deadline_is_upstream_error(monkeypatch, providers):
    rows, _ = await providers("slow")
    error = await failure(monkeypatch, rows, timeout=0.5)
    assert error.reason == "UPSTREAM_ERROR" and "0.5 s" in error.message


@pytest.mark.parametrize("outcomes", [("dead",), ("dead", "dead"), (grpc.StatusCode.INTERNAL,)], ids=["gone", "both gone", "failed"])
async def test_the_caller_hears_which_provider_failed_and_how_the_log_hears_why(monkeypatch, providers, caplog, outcomes):
    rows, _ = await providers(*outcomes)
    with caplog.at_level(logging.WARNING, logger="gateway.routing"):
        error = await failure(monkeypatch, rows)
    assert error.reason == "UPSTREAM_ERROR" and "p0" in error.message
    for row_ in rows:  # gRPC's text names the provider's address ("ipv4:127.0.0.1:38055: Connection refused")
        assert row_["address"] not in error.message and row_["address"].split(":")[1] not in error.message
    assert "ipv4" not in error.message and "refused" not in error.message  # nor the stand-in's own words
    details = " ".join(str(getattr(record, "details", "")) for record in caplog.records)
    assert ("127.0.0.1" in details) if "dead" in outcomes else ("refused" in details)
