"""The SynthService: Dia text-to-dialogue, one provider of the gateway's registry."""

from __future__ import annotations

import asyncio
import logging

import grpc

from runtime import clients
from runtime import config as runtime_config
from runtime.errors import ApiError, invalid_argument, invalid_parameter
from runtime.server import Servicer, ServiceSpec
from runtime.text import sanitize
from services.synth import audio, config, params
from services.synth.engine import SAMPLES_PER_FRAME, DiaEngine, ModelLoadError, SynthesisInput, resolve_model
from services.synth.heartbeat import Heartbeats
from services.synth.scheduler import Scheduler
from voice.synth.v1 import synth_pb2, synth_pb2_grpc
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc

log = logging.getLogger("synth.service")

FEATURES = ("voice-cloning", "dialogue")


def model_loading() -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, "MODEL_LOADING", "the Dia model is still loading; try again shortly")


class Synth(synth_pb2_grpc.SynthServiceServicer):
    def __init__(self) -> None:
        self.model_id = config.DIA_MODEL.value
        self.max_new_tokens = config.SYNTH_MAX_NEW_TOKENS.value
        self.max_prompt_seconds = config.SYNTH_MAX_AUDIO_PROMPT_SECONDS.value
        self.scheduler = Scheduler(
            max_rows=config.SYNTH_MAX_BATCH_SIZE.value,
            window_seconds=config.SYNTH_BATCH_WINDOW_MS.value / 1000,
            max_queue=config.SYNTH_MAX_QUEUE.value,
            max_frames=config.SYNTH_MAX_BATCH_FRAMES.value,
            prompt_cache_bytes=config.SYNTH_PROMPT_CACHE_BYTES.value,
        )
        self.engine: DiaEngine | None = None  # loaded in start()
        self.transcode_channel: grpc.aio.Channel | None = None
        self.heartbeats: Heartbeats | None = None

    async def start(self) -> None:
        # Loading takes seconds (minutes for a download): in the generation
        # thread, which owns the model, while health says NOT_SERVING.
        loop = asyncio.get_running_loop()
        try:
            self.engine = await loop.run_in_executor(self.scheduler.thread, self._load_engine)
        except ModelLoadError as error:
            log.error(str(error))  # the one line an operator needs; start-up then fails
            raise
        self.scheduler.start(self.engine)
        self.transcode_channel = clients.service_channel("transcode")
        self.heartbeats = Heartbeats(
            runtime_config.SERVICES["gateway"].address.value,
            self.provider_info,
            config.SYNTH_HEARTBEAT_SECONDS.value,
            config.provider_token(),
        )
        self.heartbeats.start()

    def _load_engine(self) -> DiaEngine:
        dia, dac = resolve_model(config.DIA_MODEL.value, config.DAC_MODEL.value, config.tiny_model_dir())
        return DiaEngine.load(
            dia, dac, self.model_id, config.SYNTH_DEVICE.value, config.SYNTH_TORCH_THREADS.value
        )

    async def leave_registry(self) -> None:
        # First thing on shutdown, so that the gateway stops routing here
        # while the calls in flight finish.
        if self.heartbeats is not None:
            await self.heartbeats.stop()

    async def stop(self) -> None:
        await self.scheduler.close()
        if self.transcode_channel is not None:
            await self.transcode_channel.close()

    def provider_info(self) -> synth_pb2.ProviderInfo:
        return synth_pb2.ProviderInfo(
            provider_id=config.SYNTH_PROVIDER_ID.value,
            address=config.SYNTH_ADVERTISE_ADDRESS.value,
            models=[synth_pb2.Model(id=self.model_id, features=FEATURES)],
            capacity=self.scheduler.max_rows,
            load=self.scheduler.load,
        )

    async def GetProviderInfo(self, request, context):
        return synth_pb2.GetProviderInfoResponse(provider=self.provider_info())

    async def Synthesize(self, request, context):
        if self.engine is None:  # a caller that did not wait for SERVING
            raise model_loading()
        synthesis = self._synthesis_input(request)
        generated = await self.scheduler.submit(synthesis, request.account)
        wav, duration = audio.to_wav(generated.samples), audio.duration_seconds(generated.samples)
        if synthesis.params.speed_factor != 1.0:
            wav, duration = await self._change_speed(wav, synthesis.params.speed_factor)
        log.info(
            "synthesized",
            extra={"frames": generated.generated_frames, "seconds": round(duration, 2), "seed": synthesis.seed},
        )
        return synth_pb2.SynthesizeResponse(
            wav=wav,
            duration_seconds=duration,
            model=self.model_id,
            seed=synthesis.seed,
            generated_frames=generated.generated_frames,
        )

    async def StreamSynthesize(self, request, context):
        raise ApiError(
            grpc.StatusCode.UNIMPLEMENTED,
            "NOT_IMPLEMENTED",
            "streaming synthesis is not available yet; use Synthesize for the whole WAV",
        )
        yield  # a generator, as the streaming handler must be

    def _synthesis_input(self, request: synth_pb2.SynthesizeRequest) -> SynthesisInput:
        """Validate a request into what the engine generates from; raises INVALID_ARGUMENT."""
        if request.model and request.model != self.model_id:
            raise invalid_parameter("model", f"this provider serves {self.model_id!r}, not {request.model!r}")
        generation = params.from_proto(request.settings, self.max_new_tokens)
        script = sanitize(request.script)
        if not script:
            raise invalid_parameter("script", "script is empty: it needs text to speak, starting with [S1]")

        prompt, text = None, script
        has_prompt = request.HasField("audio_prompt") and (
            request.audio_prompt.wav or request.audio_prompt.transcript
        )
        if has_prompt:
            transcript = sanitize(request.audio_prompt.transcript)
            if not transcript:
                raise invalid_argument(
                    "MISSING_TRANSCRIPT",
                    "the audio prompt has no transcript; Dia needs what is said in it to clone the voice",
                    "audio_prompt.transcript",
                )
            prompt = audio.read_prompt(request.audio_prompt.wav, self.max_prompt_seconds)
            # Dia continues the prompt: its transcript comes first, then the new lines.
            text = f"{transcript} {script}"

        assert self.engine is not None
        # Dia's decoder positions hold the prompt's frames and the new ones (params.fit_positions).
        prompt_frames = 0 if prompt is None else params.frames_of(prompt.size, SAMPLES_PER_FRAME)
        lower_to_fit = request.settings.lower_max_new_tokens_to_fit or not request.settings.HasField("max_new_tokens")
        generation = params.fit_positions(generation, prompt_frames, self.engine.max_frames, lower_to_fit)
        tokens = self.engine.count_text_tokens(text)
        if tokens > self.engine.max_text_tokens:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "REQUEST_TOO_LARGE",
                f"script and prompt transcript are {tokens} bytes; Dia reads at most {self.engine.max_text_tokens}",
                param="script",
            )
        seed = generation.seed if generation.seeded else params.random_seed()
        return SynthesisInput(text=text, prompt=prompt, params=generation, seed=seed)

    async def _change_speed(self, wav: bytes, speed_factor: float) -> tuple[bytes, float]:
        # Pitch-preserving tempo change by the transcode service; its errors pass on as they are.
        reply = await transcode_pb2_grpc.TranscodeServiceStub(self.transcode_channel).ChangeSpeed(
            transcode_pb2.ChangeSpeedRequest(audio=wav, speed_factor=speed_factor)
        )
        return reply.wav, reply.duration_seconds


def build_spec() -> ServiceSpec:
    synth = Synth()
    return ServiceSpec(
        name="synth",
        servicers=[
            Servicer(
                synth_pb2_grpc.add_SynthServiceServicer_to_server,
                synth,
                synth_pb2.DESCRIPTOR.services_by_name["SynthService"].full_name,
            )
        ],
        on_start=synth.start,
        on_shutdown=synth.leave_registry,
        on_stop=synth.stop,
    )
