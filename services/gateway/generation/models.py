"""ModelService: the models online synth providers serve (GET /v1/models, GET /v1/models/{id}).

GET /v1/models is one URL that OpenAI's and the hosted predictor's clients
both list, so its answer carries both shapes: this API's own list (OpenAI's
shape, ``data``) and the predictor's ``results``, made by its dialect
(dialects/predictor) and handed in as `predictor_listing`.
"""

from __future__ import annotations

from typing import Callable, Sequence

from runtime.errors import not_found
from services.gateway.accounts import Accounts
from services.gateway.generation.registry import ProviderDirectory
from voice.gateway.v1 import models_pb2, models_pb2_grpc

# The models in another dialect's shape, from this API's cards.
Listing = Callable[[Sequence[models_pb2.ModelCard]], list]


class ModelService(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, accounts: Accounts, providers: ProviderDirectory, predictor_listing: Listing) -> None:
        self.accounts = accounts
        self.providers = providers
        self.predictor_listing = predictor_listing

    async def ListModels(self, request, context):
        await self.accounts.caller(context)
        models = await self.providers.models()
        return models_pb2.ListModelsResponse(object="list", data=models, results=self.predictor_listing(models))

    async def GetModel(self, request, context):
        await self.accounts.caller(context)
        for model in await self.providers.models():
            if model.id == request.id:
                return models_pb2.GetModelResponse(model=model)
        raise not_found(f"there is no model {request.id[:100]!r} online: GET /v1/models lists them")
