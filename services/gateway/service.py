"""The gateway process: the generation domain's gRPC services (generation/, with the
OpenAI and hosted-predictor dialects in dialects/) and the public HTTP edge (edge/),
which serves every upstream's HTTP routes, the gateway's own included.

This module is where the parts are built and put together, each with what it
needs: the store (store/, the only part that talks to PostgreSQL), the
library client, the router, the pipeline, and the servicers,
thin adapters over the pipeline that never reach into one another. The edge
knows nothing of generations, and the domain nothing of HTTP; what the edge
needs of the domain is the function that checks API keys (accounts.py).
"""

from __future__ import annotations

import asyncio
import logging

from runtime import config
from runtime.errors import ApiError
from runtime.objects import ObjectStore
from runtime.server import Servicer, ServiceSpec, stop_task
from services.gateway import accounts
from services.gateway.config import (
    ACCOUNT_CONCURRENT_GENERATIONS,
    ANALYSIS,
    ANALYSIS_TIMEOUT_SECONDS,
    AUDIO_REDIRECTS,
    AUDIO_RETENTION_SECONDS,
    ACCOUNT_GENERATION_BURST,
    ACCOUNT_GENERATIONS_PER_SECOND,
    BROWSER_TOKEN_MAX_SECONDS,
    KEY_CACHE_SECONDS,
    MAX_COLLECTION_CHARS,
    MAX_KEY_NAME_CHARS,
    MAX_INPUT_CHARS,
    PREDICTION_MAX_WAIT_SECONDS,
    PROMPT_GAP_SECONDS,
    PUBLIC_URL,
    READINESS_INTERVAL_SECONDS,
    RECORD_RETRY_MAX_SECONDS,
    RECORD_RETRY_SECONDS,
    SIGNED_URL_SECONDS,
    SYNTH_TIMEOUT_SECONDS,
)
from services.gateway.dialects.openai.speech import SpeechService
from services.gateway.dialects.predictor.files import FileService
from services.gateway.dialects.predictor.models import Models, listing
from services.gateway.dialects.predictor.predictions import PredictionService, to_prediction
from services.gateway.dialects.predictor.webhooks import PredictionWebhooks, WebhookService
from services.gateway.edge.config import MAX_BODY_BYTES, upstream_names
from services.gateway.edge.front import HttpFront
from services.gateway.edge.upstreams import InProcess, RouteTable
from services.gateway.generation import request, webhooks
from services.gateway.generation.analysis import Analyzer
from services.gateway.generation.audio_inputs import AudioInputs
from services.gateway.generation.audio_urls import AudioUrls
from services.gateway.generation.files import Files
from services.gateway.generation.generations import GenerationService
from services.gateway.generation.jobs import Jobs
from services.gateway.generation.library import Library
from services.gateway.generation.models import ModelService
from services.gateway.generation.pipeline import Pipeline, Settings
from services.gateway.generation.registry import ProviderDirectory, ProviderRegistry
from services.gateway.generation.routing import VOICE_CLONING, Router
from services.gateway.generation.tenancy import AccountDeletion, AccountService, KeyService, UsageReports, UsageService
from services.gateway.generation.storage import AudioStorage
from services.gateway.store import Store
from services.gateway.store.generations import AccountLimits
from voice.gateway.v1 import accounts_pb2_grpc, generations_pb2_grpc, models_pb2_grpc, providers_pb2_grpc
from voice.openai.v1 import speech_pb2_grpc
from voice.predictor.v1 import predictions_pb2_grpc

log = logging.getLogger("gateway")

# How often each gateway closes the history records a stopped gateway left open.
ABANDONED_SWEEP_SECONDS = 60.0
# How often each gateway purges deleted accounts once more and sweeps expired browser tokens.
ACCOUNT_SWEEP_SECONDS = 60.0


def abandoned_after_seconds() -> float:
    """Past this age no gateway can still be working on a request: its deadlines are over."""
    return SYNTH_TIMEOUT_SECONDS.value + 2 * config.UPSTREAM_TIMEOUT_SECONDS.value + 60


def purge_again_after_seconds() -> float:
    """When a deleted account is purged once more: once every replica's key cache has forgotten its keys,
    and whatever a replica admitted until then has ended."""
    return KEY_CACHE_SECONDS.value + abandoned_after_seconds()


def public_url() -> str:
    return PUBLIC_URL.value


def signed_url_seconds() -> int:
    return SIGNED_URL_SECONDS.value


def audio_redirects() -> bool:
    return AUDIO_REDIRECTS.value


def audio_retention_seconds() -> float:
    return AUDIO_RETENTION_SECONDS.value


def pipeline_settings() -> Settings:
    return Settings(
        request=request.Limits.configured(),
        account=AccountLimits(
            ACCOUNT_GENERATIONS_PER_SECOND.value, ACCOUNT_GENERATION_BURST.value, ACCOUNT_CONCURRENT_GENERATIONS.value
        ),
    )


class Gateway:
    def __init__(self) -> None:
        self.store = Store()
        self.table: RouteTable | None = None
        self.front: HttpFront | None = None
        self._sweeper: asyncio.Task | None = None
        self._recorder: asyncio.Task | None = None
        self._account_sweeper: asyncio.Task | None = None
        self._object_sweeper: asyncio.Task | None = None
        self.accounts = accounts.Accounts(self.store.accounts)
        # The audio's bytes: the object store (S3), opened on first use; readiness asks it too.
        self.storage = AudioStorage(ObjectStore(), self.store, audio_redirects)
        self.providers = ProviderDirectory(self.store.providers)
        self.library = Library()
        self.router = Router(self.providers)
        self.urls = AudioUrls(self.store.url_signing_key, public_url, signed_url_seconds)
        self.analyzer = Analyzer(self.library, lambda: ANALYSIS.value, lambda: ANALYSIS_TIMEOUT_SECONDS.value)
        self.pipeline = Pipeline(
            generations=self.store.generations,
            library=self.library,
            prompt_gap_seconds=PROMPT_GAP_SECONDS.value,
            router=self.router,
            settings=pipeline_settings,
            urls=self.urls,
            storage=self.storage,
            analyzer=self.analyzer,
        )
        deliveries = webhooks.Webhooks(self.store.webhooks)
        self.jobs = Jobs(
            self.pipeline,
            self.store.jobs,
            self.store.generations,
            on_event=PredictionWebhooks(self.store.predictions, deliveries, to_prediction, self.urls),
        )
        files = Files(self.store.files, self.storage)
        self.registry = ProviderRegistry(self.store.providers)
        self.generations = GenerationService(
            self.accounts, self.pipeline, self.store.generations, self.urls, self.storage
        )
        self.speech = SpeechService(self.accounts, self.pipeline, self.library)
        self.predictions = PredictionService(
            self.accounts,
            self.pipeline,
            self.jobs,
            self.store.predictions,
            AudioInputs(self.library, files, self.store.prompt_samples, public_url),
            Models(self.providers),
            self.urls,
        )
        self.files = FileService(self.accounts, files, public_url)
        self.webhooks = WebhookService(self.accounts, deliveries)
        self.models = ModelService(self.accounts, self.providers, listing(public_url))
        self.keys = KeyService(self.accounts)
        self.deletion = AccountDeletion(self.accounts, self.library, self.storage, purge_again_after_seconds)
        reports = UsageReports(self.store.usage, self.store.accounts, self.library)
        self.account_admin = AccountService(self.accounts, self.deletion, reports)
        self.usage = UsageService(self.accounts, reports)

    async def start(self) -> None:
        self.registry.check_settings()
        await self.store.connect()
        await self.urls.start()  # before any URL is signed or checked
        self.library.start()
        self.analyzer.start()
        self.speech.start()
        self.jobs.start()
        self._sweeper = asyncio.create_task(self._fail_abandoned_generations())
        # How generations ended while the database was down, written as soon as it answers again.
        self._recorder = asyncio.create_task(
            self.store.generations.keep_recording(RECORD_RETRY_SECONDS.value, RECORD_RETRY_MAX_SECONDS.value)
        )
        # Deleted accounts purged once more (what other replicas let in meanwhile), expired tokens swept.
        self._account_sweeper = asyncio.create_task(self.deletion.keep_purging(ACCOUNT_SWEEP_SECONDS))
        # Audio past its retention, objects of deleted rows still waiting, objects no row names.
        self._object_sweeper = asyncio.create_task(self.storage.keep_sweeping(audio_retention_seconds))
        # The gateway's own services are called in process; the others over gRPC.
        self.table = RouteTable(upstream_names(), InProcess("gateway", self.servicers(), self.fully_ready))
        await self.table.discover_all()
        self.table.start_watching()
        self.front = HttpFront(
            self.table, self.accounts.authenticate, MAX_BODY_BYTES.value, media_origins=self.storage.media_origins()
        )
        await self.front.start(config.BIND_HOST.value, config.GATEWAY_HTTP_PORT.value)

    async def _fail_abandoned_generations(self) -> None:
        """Now and then, close the history records a stopped gateway left open."""
        older_than = abandoned_after_seconds()
        while True:
            try:
                closed = await self.store.generations.fail_abandoned(older_than)
                if closed:
                    log.warning("marked abandoned generations failed", extra={"count": closed})
            except ApiError:  # database down: the next round will do it
                pass
            await asyncio.sleep(ABANDONED_SWEEP_SECONDS)

    async def stop(self) -> None:
        await stop_task(self._sweeper)
        await stop_task(self._recorder)
        await stop_task(self._account_sweeper)
        await stop_task(self._object_sweeper)
        if self.front is not None:
            await self.front.stop()
        await self.jobs.close()
        if self.table is not None:
            await self.table.close()
        await self.speech.close()
        await self.analyzer.close()
        await self.library.close()
        await self.router.close()
        try:  # the outcomes still waiting for the database, if it answers now; else the sweep closes them
            await self.store.generations.record_unrecorded()
        except ApiError:
            log.warning(
                "stopped with generation outcomes the database did not take",
                extra={"count": self.store.generations.unrecorded},
            )
        await self.storage.close()
        await self.store.close()

    async def ready(self) -> bool:
        """PostgreSQL and the object store both answer: the history and its audio need both."""
        database, storage = await asyncio.gather(self.store.is_reachable(), self.storage.is_reachable())
        return database and storage

    async def fully_ready(self) -> bool:
        """Every one of its services ready (what /readyz asks of the gateway)."""
        return await self.ready() and await self.generations_ready()

    async def generations_ready(self) -> bool:
        """A generation can be served: an online provider offers a voice-cloning model.

        Until then the generation and speech services are NOT_SERVING, so /readyz
        and `make run` do not call the mesh ready while every generation would be
        404 no_provider. The registry and the models stay ready: providers must
        reach the one to register, and the pod's readiness probe asks the other.
        """
        try:
            models = await self.providers.models()
        except ApiError:  # database down: the spec's own probe says so
            return False
        return any(VOICE_CLONING in model.features for model in models)


    def servicers(self) -> list[Servicer]:
        return [
            Servicer(
                generations_pb2_grpc.add_GenerationServiceServicer_to_server,
                self.generations,
                "voice.gateway.v1.GenerationService",
                readiness=self.generations_ready,
            ),
            Servicer(
                speech_pb2_grpc.add_SpeechServiceServicer_to_server,
                self.speech,
                "voice.openai.v1.SpeechService",
                readiness=self.generations_ready,
            ),
            Servicer(
                predictions_pb2_grpc.add_PredictionServiceServicer_to_server,
                self.predictions,
                "voice.predictor.v1.PredictionService",
                readiness=self.generations_ready,
            ),
            Servicer(
                predictions_pb2_grpc.add_FileServiceServicer_to_server,
                self.files,
                "voice.predictor.v1.FileService",
            ),
            Servicer(
                predictions_pb2_grpc.add_WebhookServiceServicer_to_server,
                self.webhooks,
                "voice.predictor.v1.WebhookService",
            ),
            Servicer(
                models_pb2_grpc.add_ModelServiceServicer_to_server,
                self.models,
                "voice.gateway.v1.ModelService",
            ),
            Servicer(accounts_pb2_grpc.add_KeyServiceServicer_to_server, self.keys, "voice.gateway.v1.KeyService"),
            Servicer(
                accounts_pb2_grpc.add_AccountServiceServicer_to_server,
                self.account_admin,
                "voice.gateway.v1.AccountService",
            ),
            Servicer(accounts_pb2_grpc.add_UsageServiceServicer_to_server, self.usage, "voice.gateway.v1.UsageService"),
            Servicer(
                providers_pb2_grpc.add_ProviderRegistryServiceServicer_to_server,
                self.registry,
                "voice.gateway.v1.ProviderRegistryService",
            ),
        ]


# What the gateway publishes (runtime/limits.py): its protos name these, and the HTTP edge
# reads them to set deadlines and document lengths in /openapi.json.
LIMITS = {
    "input_chars": MAX_INPUT_CHARS,
    "collection_chars": MAX_COLLECTION_CHARS,
    "synth_timeout_seconds": SYNTH_TIMEOUT_SECONDS,
    "prediction_wait_seconds": PREDICTION_MAX_WAIT_SECONDS,
    "key_name_chars": MAX_KEY_NAME_CHARS,
    "browser_token_seconds": BROWSER_TOKEN_MAX_SECONDS,
}


def build_spec() -> ServiceSpec:
    gateway = Gateway()
    return ServiceSpec(
        name="gateway",
        servicers=gateway.servicers(),
        on_start=gateway.start,
        on_stop=gateway.stop,
        readiness=gateway.ready,
        readiness_interval_seconds=READINESS_INTERVAL_SECONDS.value,
        limits=LIMITS,
    )
