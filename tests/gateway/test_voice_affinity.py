"""Routing that follows the cached voices: a generation with cloned voices goes
to the provider its voices belong to (rendezvous hashing), which has most
likely encoded them already, unless that one is busier than the least loaded
by more than GATEWAY_VOICE_AFFINITY_SLACK requests. The real Router over
provider rows as the registry lists them; the calls go to stand-in providers
(test_routing.py's), and, at the end, through the running mesh.
bench/voice_affinity_bench.py measures what it gains with three real synth
processes."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import uuid

import aiohttp
import grpc
import prometheus_client
import pytest

from services.gateway.config import VOICE_AFFINITY, VOICE_AFFINITY_SLACK
from services.gateway.generation.library import Sample
from services.gateway.generation.routing import Candidate, Router, VoiceAffinity, voices_key
from tests.conftest import free_port
from tests.gateway.conftest import FOX, HELLO, Account, created, extra_gateway, make_key, upload_form, wait_for_models
from tests.gateway.test_routing import CLONING, NOW, Provider, row
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

GENERATIONS = "/v1/voice/generations"
ON = VoiceAffinity(on=True, slack=2)


class Listed:
    """The providers table, as the registry reads it."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    async def online(self) -> list[dict]:
        return self.rows


def rows_of(*provider_ids: str, capacity: int = 4) -> list[dict]:
    return [row(provider_id, ("dia", CLONING), capacity=capacity) for provider_id in provider_ids]


def voices(number: int) -> str:
    """The identity of a pair of cloned voices, as the pipeline hands it to the router."""
    pair = [Sample("S1", 2 * number, "Host", "Hello.", 5.0, 1_700_000_000), Sample("S2", 2 * number + 1, "Guest", "Hi.", 4.0, 1_700_000_001)]
    return voices_key(pair)


async def first_choice(rows: list[dict], key: str, affinity: VoiceAffinity = ON, in_flight=None, seed: int = 0) -> str:
    """The provider a Router over `rows` tries first for a request of the voices `key`."""
    router = Router(Listed(rows), random.Random(seed), affinity)
    router.in_flight.update(in_flight or {})
    return router.order(await router.candidates(""), key)[0].provider_id


async def holders(rows: list[dict], keys: list[str]) -> dict[str, str]:
    """Which provider each of the voices goes to while all are idle."""
    return {key: await first_choice(rows, key) for key in keys}


def routed(decision: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value("gateway_voice_routing_total", {"decision": decision}) or 0.0


# --- the voices' identity ---------------------------------------------------------


def test_the_voices_identity_is_their_samples_ids_and_versions_in_speaker_order():
    host = Sample("S1", 7, "Host", "Hello.", 5.0, 100)
    guest = Sample("S2", 9, "Guest", "Hi.", 4.0, 200)
    assert voices_key([]) == ""
    assert voices_key([host, guest]) != voices_key([dataclasses.replace(host, speaker="S2"), dataclasses.replace(guest, speaker="S1")])
    # A changed sample (a new update time) is a new prompt: its codes are cached nowhere yet.
    assert voices_key([host, guest]) != voices_key([host, dataclasses.replace(guest, version=201)])
    # The name and the transcript do not change the audio's identity beyond its version.
    assert voices_key([host]) == voices_key([dataclasses.replace(host, speaker_name="Other")])


# --- where voices go ----------------------------------------------------------------


async def test_the_same_voices_go_to_the_same_provider_whatever_the_replica_and_the_listing_order():
    rows = rows_of("a", "b", "c")
    for number in range(20):
        key = voices(number)
        chosen = {await first_choice(rows, key, seed=seed) for seed in range(5)}
        chosen |= {await first_choice(list(reversed(rows)), key, seed=seed) for seed in range(5)}
        assert len(chosen) == 1, (key, chosen)


async def test_voices_are_spread_over_the_providers_by_capacity():
    keys = [voices(number) for number in range(600)]
    shares = list((await holders(rows_of("a", "b", "c"), keys)).values())
    assert {provider: shares.count(provider) for provider in "abc"} == pytest.approx({p: 200 for p in "abc"}, abs=40)
    # A provider twice as big holds about twice the voices of each other.
    bigger = [row("big", ("dia", CLONING), capacity=8), *rows_of("a", "b")]
    shares = list((await holders(bigger, keys)).values())
    assert shares.count("big") / len(keys) == pytest.approx(0.5, abs=0.06)


async def test_when_a_provider_leaves_only_its_voices_move():
    keys = [voices(number) for number in range(1000)]
    everyone = rows_of(*[f"p{n}" for n in range(10)])
    before = await holders(everyone, keys)
    after = await holders([r for r in everyone if r["provider_id"] != "p3"], keys)
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == "p3"}
    # Its voices are shared among those left, not all handed to one.
    assert len({after[key] for key in moved}) >= 5


async def test_when_a_provider_joins_it_takes_about_its_share_and_no_other_voice_moves():
    keys = [voices(number) for number in range(1000)]
    nine = rows_of(*[f"p{n}" for n in range(9)])
    before = await holders(nine, keys)
    after = await holders([*nine, *rows_of("new")], keys)
    moved = {key for key in keys if before[key] != after[key]}
    assert {after[key] for key in moved} == {"new"}
    assert len(moved) / len(keys) == pytest.approx(1 / 10, abs=0.03)


async def test_a_provider_unreachable_since_its_heartbeat_hands_its_voices_on_as_if_it_had_left():
    rows = rows_of("a", "b", "c")
    keys = [voices(number) for number in range(60)]
    before = await holders(rows, keys)
    left = await holders([r for r in rows if r["provider_id"] != "a"], keys)
    router = Router(Listed(rows), random.Random(0), ON)
    router.unreachable_since["a"] = NOW
    found = await router.candidates("")
    for key in keys:
        order = [candidate.provider_id for candidate in router.order(found, key)]
        assert order[0] == left[key] and order[-1] == "a", (before[key], order)


# --- falling back to the least loaded -------------------------------------------------


async def three_with_loads(key: str, preferred: int, middle: int, least: int) -> tuple[list[dict], str, str, str]:
    """Three providers, the one holding `key` with load `preferred`, the others `middle` and `least`;
    returns the rows and the ids of (holder, middle, least loaded)."""
    rows = rows_of("a", "b", "c")
    holder = await first_choice(rows, key)
    middle_id, least_id = [r["provider_id"] for r in rows if r["provider_id"] != holder]
    loads = {holder: preferred, middle_id: middle, least_id: least}
    return [dict(r, load=loads[r["provider_id"]]) for r in rows], holder, middle_id, least_id


@pytest.mark.parametrize("number", range(5))
async def test_with_three_providers_the_holder_is_kept_within_the_slack_and_the_least_loaded_goes_first_past_it(number):
    key = voices(number)
    # Busier than the least loaded by exactly the slack (2): it keeps its voices.
    rows, holder, middle, least = await three_with_loads(key, preferred=3, middle=2, least=1)
    assert await first_choice(rows, key) == holder
    # One more: the least loaded goes first, not the one in between, and the holder is tried after it by load.
    rows, holder, middle, least = await three_with_loads(key, preferred=4, middle=2, least=1)
    router = Router(Listed(rows), random.Random(0), ON)
    assert [c.provider_id for c in router.order(await router.candidates(""), key)] == [least, middle, holder]
    # Once it is no longer busier, the voices go back to it.
    rows, holder, _, _ = await three_with_loads(key, preferred=1, middle=1, least=1)
    assert await first_choice(rows, key) == holder


async def test_the_requests_this_gateway_sent_since_the_heartbeat_count_toward_the_slack():
    key = voices(0)
    rows, holder, middle, least = await three_with_loads(key, preferred=0, middle=0, least=0)
    assert await first_choice(rows, key, in_flight={holder: 2}) == holder
    assert await first_choice(rows, key, in_flight={holder: 3}) != holder


@pytest.mark.parametrize("slack", [0, 5])
async def test_the_slack_is_how_many_more_requests_the_holder_may_have(slack):
    key = voices(1)
    affinity = VoiceAffinity(on=True, slack=slack)
    rows, holder, _, least = await three_with_loads(key, preferred=slack, middle=slack, least=0)
    assert await first_choice(rows, key, affinity) == holder
    rows, holder, _, least = await three_with_loads(key, preferred=slack + 1, middle=slack + 1, least=0)
    assert await first_choice(rows, key, affinity) == least


async def test_without_affinity_or_without_voices_the_least_loaded_goes_first():
    key = voices(2)
    rows, holder, middle, least = await three_with_loads(key, preferred=1, middle=2, least=0)
    assert await first_choice(rows, key) == holder
    assert await first_choice(rows, key, VoiceAffinity(on=False, slack=2)) == least
    assert await first_choice(rows, "") == least
    # Idle providers share requests without voices, or all requests with affinity off, at random.
    idle = rows_of("a", "b", "c")
    assert {await first_choice(idle, "", seed=seed) for seed in range(30)} == {"a", "b", "c"}
    off = VoiceAffinity(on=False, slack=2)
    assert {await first_choice(idle, key, off, seed=seed) for seed in range(30)} == {"a", "b", "c"}


async def test_each_decision_is_counted_by_kind():
    key = voices(3)
    within, *_ = await three_with_loads(key, preferred=2, middle=0, least=0)
    beyond, *_ = await three_with_loads(key, preferred=3, middle=0, least=0)
    before = (routed("affinity"), routed("fallback"))
    await first_choice(within, key)
    await first_choice(beyond, key)
    await first_choice(beyond, "")  # no voices: nothing to follow, not counted
    await first_choice(beyond, key, VoiceAffinity(on=False, slack=2))
    assert (routed("affinity") - before[0], routed("fallback") - before[1]) == (1, 1)


# --- through stand-in providers ---------------------------------------------------


@pytest.fixture
async def stand_ins():
    """Three stand-in providers answering with the given outcomes (test_routing's); yields a starter."""
    servers = []

    async def start(outcomes: dict[str, object]) -> tuple[list[dict], dict[str, Provider]]:
        rows, servicers = [], {}
        for provider_id, outcome in outcomes.items():
            port = free_port()
            servicers[provider_id] = Provider(outcome)
            if outcome != "dead":
                server = grpc.aio.server()
                synth_pb2_grpc.add_SynthServiceServicer_to_server(servicers[provider_id], server)
                server.add_insecure_port(f"127.0.0.1:{port}")
                await server.start()
                servers.append(server)
            rows.append(row(provider_id, ("dia", CLONING), address=f"127.0.0.1:{port}"))
        return rows, servicers

    yield start
    for server in servers:
        await server.stop(0)


async def synthesize(rows: list[dict], key: str) -> tuple[str, list[str]]:
    """A generation of the voices `key` through a Router over `rows`: the provider that answered and those tried."""
    router = Router(Listed(rows), random.Random(0), ON)
    tried: list[str] = []

    async def on_attempt(candidate: Candidate) -> None:
        tried.append(candidate.provider_id)

    try:
        found = await router.candidates("")
        answered, _ = await router.synthesize(synth_pb2.SynthesisSpec(script="[S1] Hi."), found, 10, on_attempt, key)
        return answered.provider_id, tried
    finally:
        await router.close()


async def test_generations_of_the_same_voices_are_sent_to_the_provider_holding_them(stand_ins):
    rows, servicers = await stand_ins({"a": "audio", "b": "audio", "c": "audio"})
    keys = [voices(number) for number in range(12)]
    expected = await holders(rows, keys)
    for _ in range(2):
        for key in keys:
            assert await synthesize(rows, key) == (expected[key], [expected[key]])
    assert sum(servicer.calls for servicer in servicers.values()) == 24
    assert len(set(expected.values())) > 1  # the voices were spread, not all sent to one


async def test_when_the_holder_cannot_be_reached_the_retry_goes_to_the_least_loaded(stand_ins):
    key = voices(4)
    rows, _ = await stand_ins({"a": "audio", "b": "audio", "c": "audio"})
    holder = await first_choice(rows, key)
    rows, _ = await stand_ins({provider_id: "dead" if provider_id == holder else "audio" for provider_id in "abc"})
    # The others: one idle, one busy.
    others = [provider_id for provider_id in "abc" if provider_id != holder]
    loads = {holder: 0, others[0]: 3, others[1]: 0}
    rows = [dict(r, load=loads[r["provider_id"]]) for r in rows]
    assert await synthesize(rows, key) == (others[1], [holder, others[1]])


# --- the settings -------------------------------------------------------------------


def test_the_affinity_settings_at_their_edges(monkeypatch):
    assert (VOICE_AFFINITY.value_in({}), VOICE_AFFINITY_SLACK.value_in({})) == (True, 2)
    assert VOICE_AFFINITY.value_in({VOICE_AFFINITY.name: "off"}) is False
    assert VOICE_AFFINITY.value_in({VOICE_AFFINITY.name: "true"}) is True
    # A bad value stops the gateway at start-up, naming the setting.
    with pytest.raises(SystemExit, match=VOICE_AFFINITY.name):
        VOICE_AFFINITY.value_in({VOICE_AFFINITY.name: "maybe"})
    for edge in ("0", "10000"):
        assert VOICE_AFFINITY_SLACK.value_in({VOICE_AFFINITY_SLACK.name: edge}) == int(edge)
    for beyond in ("-1", "10001", "1.5"):
        with pytest.raises(SystemExit, match=VOICE_AFFINITY_SLACK.name):
            VOICE_AFFINITY_SLACK.value_in({VOICE_AFFINITY_SLACK.name: beyond})
    monkeypatch.setenv(VOICE_AFFINITY.name, "false")
    monkeypatch.setenv(VOICE_AFFINITY_SLACK.name, "0")
    assert Router(Listed([])).affinity == VoiceAffinity(on=False, slack=0)


# --- through the running mesh -------------------------------------------------------


async def voice_routing(http) -> dict[str, float]:
    text = await (await http.get("/metrics")).text()
    found = dict(re.findall(r'^gateway_voice_routing_total\{decision="(\w+)"\} (\S+)$', text, re.MULTILINE))
    return {decision: float(found.get(decision, 0)) for decision in ("affinity", "fallback")}


async def test_a_generation_with_cloned_voices_is_routed_by_them_unless_affinity_is_off(mesh, http, key_env):
    name = f"vera-{uuid.uuid4().hex[:8]}"
    vera = Account(name, make_key(name, key_env))
    await wait_for_models(http, vera)
    hello = await created(await upload_form(http, vera, HELLO, "Host", transcript="Hello world, this is a voice sample."))
    fox = await created(await upload_form(http, vera, FOX, "Guest", transcript="The quick brown fox."))
    cloned = {"input": "[S1] Again. [S2] And again.", "speakers": {"S1": hello["id"], "S2": fox["id"]}, "max_new_tokens": 256}
    plain = {"input": "[S1] No voices here.", "max_new_tokens": 256}

    async def generate(client, body) -> None:
        response = await client.post(GENERATIONS, json=body, headers=vera.headers)
        assert response.status == 200, await response.text()
        await response.read()

    before = await voice_routing(http)
    await generate(http, cloned)
    await generate(http, plain)
    after = await voice_routing(http)
    # One provider: its voices' holder is the least loaded too, and the decision is affinity.
    assert (after["affinity"] - before["affinity"], after["fallback"] - before["fallback"]) == (1, 0)

    async with extra_gateway(mesh, GATEWAY_VOICE_AFFINITY="false") as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as other:
            await generate(other, cloned)
            assert await voice_routing(other) == {"affinity": 0, "fallback": 0}


class QueuedStream(synth_pb2_grpc.SynthServiceServicer):
    """A stand-in provider whose streams wait in its queue until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def StreamSynthesize(self, request, context):
        await self.release.wait()
        yield synth_pb2.StreamSynthesizeResponse(pcm=b"\0\0", sample_rate=44100, last=True)


async def test_a_stream_waiting_for_its_first_audio_counts_as_load_on_its_provider():
    servicer = QueuedStream()
    server = grpc.aio.server()
    synth_pb2_grpc.add_SynthServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    router = Router(Listed([row("queued", ("dia", CLONING), address=f"127.0.0.1:{port}")]), random.Random(0), ON)

    async def nothing(candidate: Candidate) -> None:
        pass

    async def stream() -> int:
        found = await router.candidates("")
        messages = router.stream_synthesize(synth_pb2.SynthesisSpec(script="[S1] Hi."), found, 10, nothing, voices(5))
        return len([message async for _, message in messages])

    try:
        streamed = asyncio.create_task(stream())

        async def counted() -> None:
            while router.in_flight["queued"] == 0:
                await asyncio.sleep(0.01)

        # Counted while the provider has not answered anything yet.
        await asyncio.wait_for(counted(), 10)
        assert router.in_flight["queued"] == 1 and not streamed.done()
        servicer.release.set()
        assert await streamed == 1
        assert router.in_flight["queued"] == 0
    finally:
        await router.close()
        await server.stop(0)
