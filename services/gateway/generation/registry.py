"""The registry of synth providers, and the models they serve.

Providers live in the ``providers`` table so that every gateway replica sees
the same ones; a provider whose last heartbeat is older than
GATEWAY_PROVIDER_TIMEOUT_SECONDS is offline and its models are not listed.

A heartbeat or deregistration counts only with the credential of the provider
id it names (runtime/provider_credentials.py); anything else is
UNAUTHENTICATED, before the request is looked at, so a caller without it can
neither add a provider (that would receive users' scripts and voices) nor
take one away, and a provider can change no registration but its own.
"""

from __future__ import annotations

import json
import logging
from typing import Mapping

import grpc
import prometheus_client
from google.protobuf import json_format

from runtime import provider_credentials
from runtime.errors import ApiError, invalid_parameter
from services.gateway.config import HEARTBEAT_INTERVAL_SECONDS, PROVIDER_TIMEOUT_SECONDS
from services.gateway.store.providers import ProvidersTable
from voice.gateway.v1 import models_pb2, providers_pb2, providers_pb2_grpc

log = logging.getLogger("gateway.registry")

# Read from the providers table, which every gateway replica shares: each reports the same count.
PROVIDERS_ONLINE = prometheus_client.Gauge(
    "gateway_providers_online",
    "Synth providers heard from within GATEWAY_PROVIDER_TIMEOUT_SECONDS, as last read (every readiness check, 5 s).",
)


def check_credential(context: grpc.aio.ServicerContext, provider_id: str) -> None:
    """Refuse a caller that does not present the credential of `provider_id`."""
    presented = dict(context.invocation_metadata() or ()).get(provider_credentials.TOKEN_METADATA, "")
    if provider_credentials.is_valid(provider_credentials.PROVIDER_SECRET.value, provider_id, presented):
        return
    # The peer and the id are for the operator; the token is never logged.
    log.warning(
        "refused a provider registry call without the provider's credential",
        extra={"peer": context.peer(), "provider_id": provider_id, "credential": "wrong" if presented else "none"},
    )
    raise ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHORIZED",
        f"no valid {provider_credentials.TOKEN_METADATA} for this provider_id",
    )


class ProviderDirectory:
    """The providers online now, as every gateway replica sees them (the shared providers table)."""

    def __init__(self, table: ProvidersTable) -> None:
        self.table = table

    async def online(self) -> list[Mapping]:
        """The providers heard from within GATEWAY_PROVIDER_TIMEOUT_SECONDS (models as JSON text)."""
        rows = await self.table.online(PROVIDER_TIMEOUT_SECONDS.value)
        PROVIDERS_ONLINE.set(len(rows))
        return rows

    async def models(self) -> list[models_pb2.ModelCard]:
        """The models of the providers heard from recently, each with how many serve it."""
        rows = await self.online()
        features: dict[str, list[str]] = {}
        providers: dict[str, int] = {}
        for row in rows:
            counted: set[str] = set()  # a provider listing a model twice still counts once
            for model in json.loads(row["models"]):
                known = features.setdefault(model["id"], [])
                known += [feature for feature in model["features"] if feature not in known]
                if model["id"] not in counted:
                    counted.add(model["id"])
                    providers[model["id"]] = providers.get(model["id"], 0) + 1
        return [
            models_pb2.ModelCard(
                id=model_id,
                object="model",
                features=features[model_id],
                # "nari-labs/Dia-1.6B-0626" is owned by nari-labs, as on the Hugging Face hub.
                owned_by=model_id.split("/")[0] if "/" in model_id else "voicemesh",
                providers=providers[model_id],
            )
            for model_id in sorted(features)
        ]


class ProviderRegistry(providers_pb2_grpc.ProviderRegistryServiceServicer):
    def __init__(self, table: ProvidersTable) -> None:
        self.table = table

    def check_settings(self) -> None:
        """At start-up: a missing secret is worth a warning."""
        if not provider_credentials.PROVIDER_SECRET.value:
            log.warning("PROVIDER_SECRET is not set: no synth provider can register")

    async def Heartbeat(self, request, context):
        provider = request.provider
        check_credential(context, provider.provider_id)
        if not provider.provider_id:
            raise invalid_parameter("provider.provider_id", "provider.provider_id is required")
        if not provider.address:
            raise invalid_parameter("provider.address", "provider.address is required")
        for name in ("capacity", "load"):
            if getattr(provider, name) < 0:
                raise invalid_parameter(f"provider.{name}", f"provider.{name} cannot be negative")
        if any(not model.id for model in provider.models):
            raise invalid_parameter("provider.models", "every model needs an id")
        models = [
            {
                "id": model.id,
                "features": list(model.features),
                # What the model holds (decoder positions, text window, sample rate), once it is loaded.
                **({"limits": json_format.MessageToDict(model.limits, preserving_proto_field_name=True)}
                   if model.HasField("limits") else {}),
            }
            for model in provider.models
        ]
        await self.table.heard_from(provider.provider_id, provider.address, models, provider.capacity, provider.load)
        return providers_pb2.HeartbeatResponse(heartbeat_interval_seconds=HEARTBEAT_INTERVAL_SECONDS.value)

    async def DeregisterProvider(self, request, context):
        check_credential(context, request.provider_id)
        if not request.provider_id:
            raise invalid_parameter("provider_id", "provider_id is required")
        # Deregistering twice (or after the row expired) is not an error: the provider is gone either way.
        await self.table.remove(request.provider_id)
        return providers_pb2.DeregisterProviderResponse()
