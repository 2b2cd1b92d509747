"""The SynthService: Dia text-to-dialogue, one provider of the gateway's registry."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import numpy as np
import torch

from runtime import config as runtime_config
from runtime import tracing
from runtime.errors import ApiError, invalid_argument, invalid_parameter
from runtime.server import Servicer, ServiceSpec
from runtime.text import sanitize
from services.synth import audio, config, params, voices
from services.synth.engine import model
from services.synth.engine.core import SynthEngine
from services.synth.engine.model import LoadedDia, ModelLoadError
from services.synth.engine.output_processor import AudioStream
from services.synth.engine.request import SynthesisInput
from services.synth.engine.streaming import STARTED_OVER, FrameFeed, stream_cut
from services.synth.heartbeat import Heartbeats
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

log = logging.getLogger("synth.service")

FEATURES = ("voice-cloning", "dialogue")


def model_loading() -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, "MODEL_LOADING", "the Dia model is still loading; try again shortly")


def model_limits(dia: LoadedDia) -> synth_pb2.ModelLimits:
    """The loaded model's sizes, as its config and codec give them."""
    return synth_pb2.ModelLimits(
        decoder_positions=dia.max_frames,
        text_window_bytes=dia.max_text_tokens,
        sample_rate=dia.sample_rate,
        samples_per_frame=dia.samples_per_frame,
    )


class Synth(synth_pb2_grpc.SynthServiceServicer):
    def __init__(self) -> None:
        self.model_id = config.DIA_MODEL.value
        self.max_new_tokens = config.SYNTH_MAX_NEW_TOKENS.value
        self.max_prompt_seconds = config.SYNTH_MAX_AUDIO_PROMPT_SECONDS.value
        self.engine = SynthEngine(
            max_rows=config.SYNTH_MAX_BATCH_SIZE.value,
            window_seconds=config.SYNTH_BATCH_WINDOW_MS.value / 1000,
            max_queue=config.SYNTH_MAX_QUEUE.value,
            max_frames=config.SYNTH_MAX_BATCH_FRAMES.value,
            prompt_cache_bytes=config.SYNTH_PROMPT_CACHE_BYTES.value,
            step_retries=config.SYNTH_STEP_RETRIES.value,
        )
        self.dia: LoadedDia | None = None  # loaded in start()
        self.heartbeats: Heartbeats | None = None
        self.library = voices.Library()  # the samples of voice prompts

    async def start(self) -> None:
        # Loading takes seconds (minutes for a download): in the generation
        # thread, which owns the model, while health says NOT_SERVING.
        loop = asyncio.get_running_loop()
        try:
            self.dia = await loop.run_in_executor(self.engine.thread, self._load_model)
        except ModelLoadError as error:
            log.error(str(error))  # the one line an operator needs; start-up then fails
            raise
        self.engine.start(self.dia)
        self.library.start()
        self.heartbeats = Heartbeats(
            runtime_config.SERVICES["gateway"].address.value,
            self.provider_info,
            config.SYNTH_HEARTBEAT_SECONDS.value,
            config.provider_token(),
        )
        self.heartbeats.start()

    def _load_model(self) -> LoadedDia:
        dia, dac = model.resolve_model(config.DIA_MODEL.value, config.DAC_MODEL.value, config.tiny_model_dir())
        return model.load(
            dia, dac, self.model_id, config.SYNTH_DEVICE.value, config.SYNTH_TORCH_THREADS.value,
            config.SYNTH_DTYPE.value,
        )

    async def leave_registry(self) -> None:
        # First thing on shutdown, so that the gateway stops routing here
        # while the calls in flight finish.
        if self.heartbeats is not None:
            await self.heartbeats.stop()

    async def stop(self) -> None:
        await self.engine.close()
        await self.library.close()

    def provider_info(self) -> synth_pb2.ProviderInfo:
        served = synth_pb2.Model(id=self.model_id, features=FEATURES)
        if self.dia is not None:  # known once loaded
            served.limits.CopyFrom(model_limits(self.dia))
        return synth_pb2.ProviderInfo(
            provider_id=config.SYNTH_PROVIDER_ID.value,
            address=config.SYNTH_ADVERTISE_ADDRESS.value,
            models=[served],
            capacity=self.engine.max_rows,
            load=self.engine.load,
        )

    async def GetProviderInfo(self, request, context):
        return synth_pb2.GetProviderInfoResponse(provider=self.provider_info())

    async def Synthesize(self, request, context):
        if self.dia is None:  # a caller that did not wait for SERVING
            raise model_loading()
        synthesis = await self._synthesis_input(request.synthesis)
        generated = await self.engine.submit(synthesis, request.synthesis.account)
        with tracing.span("synth.tempo", {"synth.speed_factor": synthesis.params.speed_factor}):
            samples = await asyncio.to_thread(
                self.engine.output.at_speed, generated.samples, synthesis.params.speed_factor
            )
        wav, duration = audio.int16_wav(samples), samples.size / audio.SAMPLE_RATE
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
            **codes_fields(generated.codes),
        )

    async def StreamSynthesize(self, request, context):
        """Synthesize, sending audio as frames are generated (see streaming.py); cancel stops it."""
        if self.dia is None:
            raise model_loading()
        feed = FrameFeed(asyncio.get_running_loop())
        synthesis = dataclasses.replace(await self._synthesis_input(request.synthesis), on_frames=feed)
        stream = self._audio_stream(synthesis)
        generation = asyncio.ensure_future(self.engine.submit(synthesis, request.synthesis.account))
        sent = index = 0
        try:
            while not generation.done() or not feed.queue.empty():
                next_frames = asyncio.ensure_future(feed.queue.get())
                await asyncio.wait({next_frames, generation}, return_when=asyncio.FIRST_COMPLETED)
                if not next_frames.done():
                    next_frames.cancel()
                    continue  # generation ended: what it queued before is taken next
                frames = next_frames.result()
                if frames is STARTED_OVER:  # a failed step's retry (the scheduler's): a new take from its start
                    if feed.audio_sent:  # part of the first take went out: the new one would not continue it
                        raise stream_cut()
                    stream = self._audio_stream(synthesis)
                    continue
                for chunk in stream.chunks(frames):
                    pcm = await asyncio.to_thread(stream.render, chunk)
                    if pcm.size:
                        feed.audio_sent = True
                        yield synth_pb2.StreamSynthesizeResponse(
                            pcm=pcm.tobytes(), sample_rate=audio.SAMPLE_RATE, chunk_index=index
                        )
                        index, sent = index + 1, sent + pcm.size
            generated = generation.result()  # its error, if it failed, ends the stream
            rest = [await asyncio.to_thread(stream.render, chunk) for chunk in stream.last_chunks()]
            rest.append(await asyncio.to_thread(stream.tail))
            pcm = np.concatenate(rest)
            sent += pcm.size
            log.info(
                "synthesized",
                extra={"frames": generated.generated_frames, "chunks": index + 1, "seed": synthesis.seed, "streamed": True},
            )
            yield synth_pb2.StreamSynthesizeResponse(
                pcm=pcm.astype("<i2").tobytes(),
                sample_rate=audio.SAMPLE_RATE,
                chunk_index=index,
                last=True,
                duration_seconds=sent / audio.SAMPLE_RATE,
                model=self.model_id,
                seed=synthesis.seed,
                generated_frames=generated.generated_frames,
                **codes_fields(generated.codes),
            )
        finally:
            generation.cancel()  # the caller went away: its row leaves its lane (engine/scheduler.py)

    def _audio_stream(self, synthesis: SynthesisInput) -> AudioStream:
        return self.engine.output.stream(
            synthesis.params.speed_factor,
            config.SYNTH_STREAM_FIRST_CHUNK_FRAMES.value,
            config.SYNTH_STREAM_CHUNK_FRAMES.value,
            config.SYNTH_STREAM_CONTEXT_FRAMES.value,
        )

    async def _synthesis_input(self, request: synth_pb2.SynthesisSpec) -> SynthesisInput:
        """Validate a request into what the engine generates from, its voice prompt made or found in the
        cache (voices.py); raises INVALID_ARGUMENT."""
        if request.model and request.model != self.model_id:
            raise invalid_parameter("model", f"this provider serves {self.model_id!r}, not {request.model!r}")
        generation = params.from_proto(request.settings, self.max_new_tokens)
        script = sanitize(request.script)
        if not script:
            raise invalid_parameter("script", "script is empty: it needs text to speak, starting with [S1]")
        assert self.dia is not None

        prompt = _Prompt()
        has_audio_prompt = request.HasField("audio_prompt") and (
            request.audio_prompt.wav or request.audio_prompt.transcript
        )
        given = [name for name, present in (
            ("audio_prompt", has_audio_prompt),
            ("voices", request.HasField("voices") and len(request.voices.samples) > 0),
            ("codes_prompt", request.HasField("codes_prompt")),
        ) if present]  # fmt: skip
        if len(given) > 1:
            raise invalid_parameter(given[1], f"a request has one prompt: {' and '.join(given)} were both given")
        if has_audio_prompt:
            prompt = self._audio_prompt(request.audio_prompt)
        elif given == ["voices"]:
            prompt = await self._voices_prompt(request.voices)
        elif given == ["codes_prompt"]:
            prompt = self._codes_prompt(request.codes_prompt)
        # Dia continues the prompt: its transcript comes first, then the new lines.
        text = f"{prompt.transcript} {script}" if prompt.transcript else script

        # Dia's decoder positions hold the prompt's frames and the new ones (params.fit_positions).
        synthesis = SynthesisInput(
            text=text, prompt=prompt.samples, params=generation, seed=0, prompt_codes=prompt.codes,
            prompt_key=prompt.key, prompt_transcript=prompt.transcript,
        )  # fmt: skip
        lower_to_fit = request.settings.lower_max_new_tokens_to_fit or not request.settings.HasField("max_new_tokens")
        generation = params.fit_positions(generation, synthesis.prompt_frames, self.dia.max_frames, lower_to_fit)
        tokens = self.dia.count_text_tokens(text)
        if tokens > self.dia.max_text_tokens:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "REQUEST_TOO_LARGE",
                f"script and prompt transcript are {tokens} bytes; Dia reads at most {self.dia.max_text_tokens}",
                param="script",
            )
        seed = generation.seed if generation.seeded else params.random_seed()
        return dataclasses.replace(synthesis, params=generation, seed=seed)

    def _audio_prompt(self, sent: synth_pb2.AudioPrompt) -> "_Prompt":
        transcript = sanitize(sent.transcript)
        if not transcript:
            raise invalid_argument(
                "MISSING_TRANSCRIPT",
                "the audio prompt has no transcript; Dia needs what is said in it to clone the voice",
                "audio_prompt.transcript",
            )
        return _Prompt(transcript, samples=audio.read_prompt(sent.wav, self.max_prompt_seconds))

    async def _voices_prompt(self, asked: synth_pb2.VoicePrompt) -> "_Prompt":
        """The prompt of the caller's samples: its codes from the cache, else made of the samples fetched now."""
        if not 0 < asked.max_seconds <= self.max_prompt_seconds:
            raise invalid_parameter(
                "max_audio_prompt_seconds",
                f"a voice prompt is more than 0 and at most {self.max_prompt_seconds:g} seconds long",
            )
        if not 0 <= asked.gap_seconds < asked.max_seconds:
            raise invalid_parameter("voices.gap_seconds", "the gap between two voices is shorter than the prompt")
        with tracing.span("synth.voice_prompt", {"voices.samples": len(asked.samples)}) as span:
            cached = self.engine.prompt_cache.get(voices.key_of(asked))
            if span is not None:
                span.set_attribute("prompt.cache", "hit" if cached is not None else "miss")
            if cached is not None:
                return _Prompt(cached.transcript, codes=cached.codes)
            made = await self.library.made(asked)  # the library's RPCs its children
        # A prompt kept whole for want of word timings is not cached: it is cut properly next time.
        return _Prompt(made.transcript, samples=made.samples, key=made.key if made.exact else None)

    def _codes_prompt(self, sent: synth_pb2.CodesPrompt) -> "_Prompt":
        """Codes sent back to continue from (a long script's previous chunk), checked to be the model's."""
        assert self.dia is not None
        param = "codes_prompt.codes"
        channels = self.dia.num_channels
        transcript = sanitize(sent.transcript)
        if not transcript:
            raise invalid_argument("MISSING_TRANSCRIPT", "the codes prompt has no transcript", "codes_prompt.transcript")
        if sent.codebooks != channels or not sent.codes or len(sent.codes) % (2 * channels):
            raise invalid_parameter(param, f"codes are little-endian int16, frames × {channels} codebooks")
        codes = torch.from_numpy(np.frombuffer(sent.codes, dtype="<i2").reshape(-1, channels).astype(np.int16))
        codebook_size = min(self.dia.special_tokens.values())  # the specials (eos, pad, bos) follow the codec's codes
        if int(codes.min()) < 0 or int(codes.max()) >= codebook_size:
            raise invalid_parameter(param, f"codes are from 0 to {codebook_size - 1}")
        seconds = codes.shape[0] * self.dia.samples_per_frame / self.dia.sample_rate
        if seconds > self.max_prompt_seconds:
            raise invalid_argument(
                "AUDIO_TOO_LONG", f"the codes prompt is {seconds:.1f} s; the limit is {self.max_prompt_seconds:g} s", param
            )
        return _Prompt(transcript, codes=codes)


@dataclasses.dataclass(frozen=True)
class _Prompt:
    """A request's prompt: its transcript, and its audio's samples (to encode) or codes (none: no prompt)."""

    transcript: str = ""
    samples: np.ndarray | None = None
    codes: torch.Tensor | None = None
    key: object = None  # what the samples' codes are cached by (a voices' prompt); None: their content


def codes_fields(codes: torch.Tensor) -> dict:
    """A result's codes as SynthesizeResponse (and the stream's last message) carry them."""
    return {"codes": codes.to(torch.int16).numpy().astype("<i2").tobytes(), "codebooks": int(codes.shape[1])}


# What synth publishes (runtime/limits.py) of its own configuration; what its model holds
# (decoder positions, text window, sample rate) each Model of its ProviderInfo says.
LIMITS = {
    "max_new_tokens": config.SYNTH_MAX_NEW_TOKENS,
    "audio_prompt_seconds": config.SYNTH_MAX_AUDIO_PROMPT_SECONDS,
}


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
        limits=LIMITS,
    )
