"""The provider registry answers only providers with their credential (issue 9, defect 1).

Before, anyone who reached the gateway's gRPC port could register a provider
(which then received users' scripts and voices) or deregister the real one
(everyone got no_provider). Now each call needs the credential of the
provider id it names, HMAC(PROVIDER_SECRET, provider_id).
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from runtime import provider_credentials
from runtime.errors import ApiError
from tests.conftest import provider_metadata
from tests.gateway.conftest import Account, extra_gateway, make_key, wait_for_models
from voice.gateway.v1 import providers_pb2, providers_pb2_grpc
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

FRAMES = 256


@pytest.fixture(scope="module")
async def frank(key_env) -> Account:
    name = f"frank-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


@pytest.fixture
async def registry(mesh):
    async with grpc.aio.insecure_channel(mesh.address("gateway")) as channel:
        yield providers_pb2_grpc.ProviderRegistryServiceStub(channel)


async def real_provider(mesh) -> synth_pb2.ProviderInfo:
    """The mesh's own synth provider, as it describes itself in its heartbeats."""
    async with grpc.aio.insecure_channel(mesh.address("synth")) as channel:
        reply = await synth_pb2_grpc.SynthServiceStub(channel).GetProviderInfo(
            synth_pb2.GetProviderInfoRequest(), timeout=10
        )
    return reply.provider


def provider(provider_id: str, model: str, address: str = "127.0.0.1:1") -> synth_pb2.ProviderInfo:
    return synth_pb2.ProviderInfo(
        provider_id=provider_id,
        address=address,
        models=[synth_pb2.Model(id=model, features=["voice-cloning", "dialogue"])],
        capacity=64,  # would attract every request, were it listed
    )


async def refused(call) -> ApiError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = ApiError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED"), error
    return error


def forged(provider_id: str) -> tuple[tuple[str, str], ...]:
    """A credential made with a secret other than the mesh's."""
    return ((provider_credentials.TOKEN_METADATA, provider_credentials.token("not-the-mesh-secret", provider_id)),)


async def test_a_caller_without_the_credential_can_neither_register_nor_deregister(mesh, http, frank, registry):
    await wait_for_models(http, frank)
    real = await real_provider(mesh)
    rogue = provider(f"rogue-{uuid.uuid4().hex[:6]}", "rogue-model")
    hijack = provider(real.provider_id, real.models[0].id, address="127.0.0.1:1")

    for metadata in [(), forged(rogue.provider_id), ((provider_credentials.TOKEN_METADATA, "0" * 64),)]:
        await refused(registry.Heartbeat(providers_pb2.HeartbeatRequest(provider=rogue), metadata=metadata))
    # Nor can it point the real provider's registration elsewhere, or take it away.
    for metadata in [(), forged(real.provider_id)]:
        await refused(registry.Heartbeat(providers_pb2.HeartbeatRequest(provider=hijack), metadata=metadata))
        await refused(
            registry.DeregisterProvider(
                providers_pb2.DeregisterProviderRequest(provider_id=real.provider_id), metadata=metadata
            )
        )

    models = await wait_for_models(http, frank)
    assert "rogue-model" not in models
    assert models[real.models[0].id]["providers"] == 1
    # And the real provider still serves generations: its registration still has its own address.
    response = await http.post(
        "/v1/voice/generations",
        json={"input": "[S1] Still here.", "max_new_tokens": FRAMES},
        headers=frank.headers,
    )
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "audio/wav"


async def test_a_provider_cannot_overwrite_or_deregister_another_providers_registration(mesh, http, frank, registry):
    suffix = uuid.uuid4().hex[:6]
    first, second = provider(f"first-{suffix}", f"first-model-{suffix}"), provider(f"second-{suffix}", f"second-model-{suffix}")
    first_credential = provider_metadata(mesh.env, first.provider_id)
    second_credential = provider_metadata(mesh.env, second.provider_id)
    await registry.Heartbeat(providers_pb2.HeartbeatRequest(provider=first), metadata=first_credential)
    await registry.Heartbeat(providers_pb2.HeartbeatRequest(provider=second), metadata=second_credential)
    try:
        # The second provider's own, valid credential does not speak for the first.
        takeover = provider(first.provider_id, second.models[0].id, address="127.0.0.1:2")
        error = await refused(
            registry.Heartbeat(providers_pb2.HeartbeatRequest(provider=takeover), metadata=second_credential)
        )
        assert provider_credentials.TOKEN_METADATA in error.message
        await refused(
            registry.DeregisterProvider(
                providers_pb2.DeregisterProviderRequest(provider_id=first.provider_id), metadata=second_credential
            )
        )
        models = await wait_for_models(http, frank)
        assert models[first.models[0].id]["providers"] == 1
        assert models[second.models[0].id]["providers"] == 1
    finally:
        for info, credential in [(first, first_credential), (second, second_credential)]:
            await registry.DeregisterProvider(
                providers_pb2.DeregisterProviderRequest(provider_id=info.provider_id), metadata=credential
            )
    # Each could remove its own.
    models = await wait_for_models(http, frank)
    assert first.models[0].id not in models and second.models[0].id not in models


async def test_refusals_are_logged_without_the_credential(mesh, registry):
    rogue_id = f"rogue-{uuid.uuid4().hex[:6]}"
    credential = forged(rogue_id)
    await refused(
        registry.DeregisterProvider(providers_pb2.DeregisterProviderRequest(provider_id=rogue_id), metadata=credential)
    )
    async with asyncio.timeout(30):  # a guard: the line is on its way through the gateway's output pipe
        while not any(rogue_id in line and "refused a provider registry call" in line for line in mesh.log_lines["gateway"]):
            await asyncio.sleep(0.05)
    assert not any(credential[0][1] in line for line in mesh.log_lines["gateway"])
    assert not any(mesh.env["PROVIDER_SECRET"] in line for name in mesh.log_lines for line in mesh.log_lines[name])


async def test_a_gateway_with_a_short_provider_secret_does_not_start_and_does_not_show_it(mesh):
    weak = "w34k-s3cret-15c"  # one character short of the least
    with pytest.raises(RuntimeError) as caught:
        async with extra_gateway(mesh, PROVIDER_SECRET=weak):
            pass
    assert "invalid value for PROVIDER_SECRET=(hidden): must be at least 16 characters" in str(caught.value)
    assert weak not in str(caught.value)


def test_the_shortest_provider_secret_is_16_characters():
    setting = provider_credentials.PROVIDER_SECRET
    assert setting.value_in({setting.name: "s" * 16}) == "s" * 16
    with pytest.raises(SystemExit):
        setting.value_in({setting.name: "s" * 15})
