"""The gateway process: the generation domain's gRPC services (generations,
speech, provider registry, models, in generation/) and the public HTTP edge
(edge/), which serves every upstream's HTTP routes, the gateway's own included.

This module puts the two together: the edge knows nothing of generations,
and the domain nothing of HTTP; what the edge needs of the domain is the
function that checks API keys (accounts.py).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from runtime import config, database
from runtime.errors import ApiError
from runtime.server import Servicer, ServiceSpec, stop_task
from services.gateway import accounts
from services.gateway.config import (
    MAX_COLLECTION_CHARS,
    MAX_INPUT_CHARS,
    PREDICTION_MAX_WAIT_SECONDS,
    READINESS_INTERVAL_SECONDS,
    SYNTH_TIMEOUT_SECONDS,
)
from services.gateway.edge.config import MAX_BODY_BYTES, upstream_names
from services.gateway.edge.front import HttpFront
from services.gateway.edge.upstreams import RouteTable
from services.gateway.generation import history
from services.gateway.generation.generations import GenerationService
from services.gateway.generation.predictions import Predictions
from services.gateway.generation.prompt_audio import Files
from services.gateway.generation.registry import ModelService, ProviderRegistry, online_models
from services.gateway.generation.routing import VOICE_CLONING, Router
from services.gateway.generation.speech import SpeechService
from services.gateway.generation.webhooks import Webhooks
from voice.gateway.v1 import (
    generations_pb2_grpc,
    models_pb2_grpc,
    predictions_pb2_grpc,
    providers_pb2_grpc,
    speech_pb2_grpc,
)

log = logging.getLogger("gateway")

# How often each gateway closes the history records a stopped gateway left open.
ABANDONED_SWEEP_SECONDS = 60.0


class Gateway:
    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self.table: RouteTable | None = None
        self.front: HttpFront | None = None
        self._sweeper: asyncio.Task | None = None
        self.accounts = accounts.Accounts(self.pool)
        self.router = Router(self.pool)
        self.generations = GenerationService(self.pool, self.accounts, self.router)
        self.registry = ProviderRegistry(self.pool)
        self.predictions = Predictions(self.generations)

    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the gateway has not started"
        return self._pool

    async def start(self) -> None:
        self.registry.check_settings()
        self._pool = await accounts.open_pool()
        self.generations.start()
        self.predictions.start()
        self._sweeper = asyncio.create_task(self._fail_abandoned_generations())
        # The gRPC server is already listening, so the gateway can reflect on itself too.
        self.table = RouteTable(upstream_names())
        await self.table.discover_all()
        self.table.start_watching()
        self.front = HttpFront(
            self.table,
            self.accounts.authenticate,
            MAX_BODY_BYTES.value,
            trusted_metadata=[(accounts.EDGE_CREDENTIAL_METADATA, self.accounts.edge_credential)],
        )
        await self.front.start(config.BIND_HOST.value, config.GATEWAY_HTTP_PORT.value)

    async def _fail_abandoned_generations(self) -> None:
        """Now and then, close the history records a stopped gateway left open."""
        # Past this age no gateway can still be working on a request: its deadlines are over.
        older_than = SYNTH_TIMEOUT_SECONDS.value + 2 * config.UPSTREAM_TIMEOUT_SECONDS.value + 60
        while True:
            try:
                closed = await history.fail_abandoned(self.pool(), older_than)
                if closed:
                    log.warning("marked abandoned generations failed", extra={"count": closed})
            except ApiError:  # database down: the next round will do it
                pass
            await asyncio.sleep(ABANDONED_SWEEP_SECONDS)

    async def stop(self) -> None:
        await stop_task(self._sweeper)
        if self.front is not None:
            await self.front.stop()
        await self.predictions.close()
        if self.table is not None:
            await self.table.close()
        await self.generations.close()
        await self.router.close()
        if self._pool is not None:
            await self._pool.close()

    async def ready(self) -> bool:
        return await database.is_reachable(self.pool())

    async def generations_ready(self) -> bool:
        """A generation can be served: an online provider offers a voice-cloning model.

        Until then the generation and speech services are NOT_SERVING, so /readyz
        and `make run` do not call the mesh ready while every generation would be
        404 no_provider. The registry and the models stay ready: providers must
        reach the one to register, and the pod's readiness probe asks the other.
        """
        try:
            models = await online_models(self.pool())
        except ApiError:  # database down: the spec's own probe says so
            return False
        return any(VOICE_CLONING in model.features for model in models)


# What the gateway publishes (runtime/limits.py): its protos name these, and the HTTP edge
# reads them from here to set deadlines and document lengths in /openapi.json.
LIMITS = {
    "input_chars": MAX_INPUT_CHARS,
    "collection_chars": MAX_COLLECTION_CHARS,
    "synth_timeout_seconds": SYNTH_TIMEOUT_SECONDS,
    "prediction_wait_seconds": PREDICTION_MAX_WAIT_SECONDS,
}


def build_spec() -> ServiceSpec:
    gateway = Gateway()
    return ServiceSpec(
        name="gateway",
        servicers=[
            Servicer(
                generations_pb2_grpc.add_GenerationServiceServicer_to_server,
                gateway.generations,
                "voice.gateway.v1.GenerationService",
                readiness=gateway.generations_ready,
            ),
            Servicer(
                speech_pb2_grpc.add_SpeechServiceServicer_to_server,
                SpeechService(gateway.generations),
                "voice.gateway.v1.SpeechService",
                readiness=gateway.generations_ready,
            ),
            Servicer(
                predictions_pb2_grpc.add_PredictionServiceServicer_to_server,
                gateway.predictions,
                "voice.gateway.v1.PredictionService",
                readiness=gateway.generations_ready,
            ),
            Servicer(
                predictions_pb2_grpc.add_FileServiceServicer_to_server,
                Files(gateway.generations),
                "voice.gateway.v1.FileService",
            ),
            Servicer(
                predictions_pb2_grpc.add_WebhookServiceServicer_to_server,
                Webhooks(gateway.generations),
                "voice.gateway.v1.WebhookService",
            ),
            Servicer(
                models_pb2_grpc.add_ModelServiceServicer_to_server,
                ModelService(gateway.pool),
                "voice.gateway.v1.ModelService",
            ),
            Servicer(
                providers_pb2_grpc.add_ProviderRegistryServiceServicer_to_server,
                gateway.registry,
                "voice.gateway.v1.ProviderRegistryService",
            ),
        ],
        on_start=gateway.start,
        on_stop=gateway.stop,
        readiness=gateway.ready,
        readiness_interval_seconds=READINESS_INTERVAL_SECONDS.value,
        limits=LIMITS,
    )
