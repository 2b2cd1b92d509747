"""Models and their versions in the hosted predictor's shape.

"nari-labs/dia" is Dia on any online provider (auto-select); every online
model id of the owner/name form is a model too. Each has one version, its
latest, whose id is stable across replicas and restarts.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from typing import Sequence

from runtime.errors import invalid_parameter, not_found
from services.gateway.dialects.predictor import inputs
from services.gateway.generation.registry import ProviderDirectory
from voice.gateway.v1 import models_pb2
from voice.predictor.v1 import predictions_pb2

# "Dia on any online provider": the model the predictor's clients know Dia by.
DIA = "nari-labs/dia"
# A model id the hosted predictor's client can name (owner/name).
OWNER_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# A version created_at that does not change between restarts.
VERSION_CREATED = datetime.datetime(2025, 4, 21, tzinfo=datetime.timezone.utc)


def version_id(model: str) -> str:
    """A model's (only) version id: 64 hex digits, as the predictor's are, stable across replicas."""
    return hashlib.sha256(f"voicemesh:{model}".encode()).hexdigest()


def generation_model(model: str) -> str:
    """The model a prediction of `model` generates with: "" (any) for Dia."""
    return "" if model == DIA else model


def model_version(model: str) -> predictions_pb2.PredictionModelVersion:
    version = predictions_pb2.PredictionModelVersion(id=version_id(model), cog_version="voicemesh")
    version.created_at.FromDatetime(VERSION_CREATED)
    version.openapi_schema.update(inputs.schema())
    return version


def model_card(model: str, public_url: str) -> predictions_pb2.PredictionModel:
    owner, name = model.split("/", 1)
    description = (
        "Dia text-to-dialogue with voice cloning, on any online provider" if model == DIA else f"Dia model {model}"
    )
    return predictions_pb2.PredictionModel(
        url=f"{public_url.rstrip('/')}/v1/models/{model}",
        owner=owner,
        name=name,
        description=description,
        visibility="public",
        latest_version=model_version(model),
    )


def listing(public_url):
    """GET /v1/models' "results" (models.proto): Dia and the owner/name models among `cards`."""

    def results(cards: Sequence[models_pb2.ModelCard]) -> list[predictions_pb2.PredictionModel]:
        names = [DIA, *(card.id for card in cards if OWNER_NAME.fullmatch(card.id))]
        return [model_card(name, public_url()) for name in names]

    return results


class Models:
    """The models a prediction can name, as the providers online now serve them."""

    def __init__(self, providers: ProviderDirectory) -> None:
        self.providers = providers

    async def named(self, reference: str) -> str:
        """The model a reference names: DIA, or an online model id of the owner/name form; NOT_FOUND."""
        if reference == DIA:
            return DIA
        if OWNER_NAME.fullmatch(reference):
            if any(model.id == reference for model in await self.providers.models()):
                return reference
        raise not_found(
            f"there is no model {reference[:100]!r}: use {DIA!r} (Dia on any online provider) or the id of an "
            "owner/name model listed by GET /v1/models"
        )

    async def of_version(self, version: str) -> str:
        """The model of a version id, or of "owner/name" (its latest) or "owner/name:version"."""
        reference, _, wanted = version.partition(":")
        if OWNER_NAME.fullmatch(reference):
            model = await self.named(reference)
            if wanted and wanted != version_id(model):
                raise not_found(f"model {model} has no version {wanted[:100]!r}")
            return model
        online = [model.id for model in await self.providers.models() if OWNER_NAME.fullmatch(model.id)]
        for model in [DIA, *online]:
            if version_id(model) == version:
                return model
        raise invalid_parameter(
            "version", f"there is no version {version[:100]!r}: use a version id of GET /v1/models/{DIA} or \"{DIA}\""
        )
