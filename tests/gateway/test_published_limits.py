"""Each service publishes its own limits (voice.api.v1.LimitsService), and the gateway's
/openapi.json documents every limited field with the value of the service that checks it,
end to end: the mesh, and a library process configured otherwise than the gateway."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import grpc
from google.protobuf import descriptor_pool
from grpc_requests import AsyncClient

from runtime.server import channel_options
from services.gateway.service import LIMITS as GATEWAY_LIMITS
from services.library.service import LIMITS as LIBRARY_LIMITS
from services.stt.service import LIMITS as STT_LIMITS
from services.synth.service import LIMITS as SYNTH_LIMITS
from services.transcode.service import LIMITS as TRANSCODE_LIMITS
from tests.conftest import ROOT
from tests.gateway.conftest import HELLO, assert_error, created, extra_gateway, upload_form
from tests.library.helpers import library_process
from voice.api.v1 import limits_pb2, limits_pb2_grpc

DECLARED = {
    "gateway": GATEWAY_LIMITS,
    "library": LIBRARY_LIMITS,
    "transcode": TRANSCODE_LIMITS,
    "stt": STT_LIMITS,
    "synth": SYNTH_LIMITS,
}
LIBRARY_FIELDS = ("speaker_name", "transcript", "collection")


async def published(address: str) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
        reply = await limits_pb2_grpc.LimitsServiceStub(channel).GetLimits(limits_pb2.GetLimitsRequest(), timeout=10)
    return {name: limit.value for name, limit in reply.limits.items()}


def form_of(document: dict) -> dict:
    """The properties of the sample upload's multipart form."""
    upload = document["paths"]["/v1/voice/samples"]["post"]
    return upload["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]


def update_of(document: dict) -> dict:
    """The properties of the sample update's JSON body."""
    update = document["paths"]["/v1/voice/samples/{id}"]["patch"]
    return update["requestBody"]["content"]["application/json"]["schema"]["properties"]


def request_schema(document: dict, path: str) -> dict:
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema


async def test_every_service_answers_its_limits_as_configured(mesh):
    for service, declared in DECLARED.items():
        expected = {name: float(setting.value_in(mesh.env)) for name, setting in declared.items()}
        assert await published(mesh.address(service)) == expected, service
    library = await published(mesh.address("library"))
    assert (library["speaker_name_chars"], library["transcript_chars"], library["collection_chars"]) == (100, 2000, 100)
    assert (await published(mesh.address("gateway")))["synth_timeout_seconds"] == 300


async def test_a_reflection_client_reads_them_without_our_generated_code(mesh):
    client = AsyncClient(mesh.address("library"), descriptor_pool=descriptor_pool.DescriptorPool())
    try:
        assert "voice.api.v1.LimitsService" in await client.service_names()
        reply = await client.request("voice.api.v1.LimitsService", "GetLimits", {}, timeout=30)
    finally:
        await client.channel.close()
    assert reply["limits"]["speaker_name_chars"] == {
        "value": 100, "description": LIBRARY_LIMITS["speaker_name_chars"].doc,
    }  # fmt: skip


async def test_openapi_shows_the_length_of_every_limited_field(http):
    document = await (await http.get("/openapi.json")).json()
    # The library's own, which the gateway's environment does not hold.
    for properties in (form_of(document), update_of(document)):
        assert {name: properties[name]["maxLength"] for name in LIBRARY_FIELDS} == {
            "speaker_name": 100, "transcript": 2000, "collection": 100,
        }  # fmt: skip
    generation = request_schema(document, "/v1/voice/generations")["properties"]
    assert (generation["input"]["maxLength"], generation["collection"]["maxLength"]) == (8192, 100)
    assert request_schema(document, "/v1/audio/speech")["properties"]["input"]["maxLength"] == 8192
    # No field says "at most as many characters as the service's limit ... allows" instead of a number.
    assert "as many characters as" not in str(document)


async def test_a_library_configured_otherwise_is_documented_and_checked_with_its_own_value(mesh, accounts):
    alice, _ = accounts
    async with library_process(mesh.env, LIBRARY_MAX_SPEAKER_NAME_CHARS="37") as library:
        # The gateway's own environment says otherwise: what counts is what the library publishes.
        settings = dict(LIBRARY_ADDR=library.address("library"), LIBRARY_MAX_SPEAKER_NAME_CHARS="100")
        async with extra_gateway(mesh, **settings) as gateway:
            async with aiohttp.ClientSession(base_url=gateway.http_url) as http:

                async def documented() -> int:
                    document = await (await http.get("/openapi.json")).json()
                    assert form_of(document)["speaker_name"]["maxLength"] == update_of(document)["speaker_name"]["maxLength"]
                    return form_of(document)["speaker_name"]["maxLength"]

                assert await documented() == 37
                await created(await upload_form(http, alice, HELLO, "n" * 37, transcript="Hello world."))
                refused = await upload_form(http, alice, HELLO, "n" * 38, transcript="Hello world.")
                await assert_error(refused, 400, "invalid_parameter", "speaker_name")

                await library.stop_service("library")
                await asyncio.sleep(1)
                assert await documented() == 37  # down: its last-known limits hold, as its routes do

                library.env["LIBRARY_MAX_SPEAKER_NAME_CHARS"] = "41"
                await library.start_service("library")
                await library.wait_serving("library", timeout=60)
                async with asyncio.timeout(30):  # the gateway reflects again once it sees it serving
                    while await documented() != 41:
                        await asyncio.sleep(0.2)


def test_the_readme_lists_every_published_limit_with_its_setting():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| (\w+) \| `(\w+)` \| `([A-Z][A-Z0-9_]+)` \|", readme, re.MULTILINE))
    declared = {(service, name, setting.name) for service, limits in DECLARED.items() for name, setting in limits.items()}
    assert listed == declared, "README's table of published limits is stale"
