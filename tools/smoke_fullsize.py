"""`make smoke-fullsize`: the synth service on the full-size Dia architecture, random weights.

No checkpoint can be downloaded here, so this builds what the real one looks
like: ``DiaConfig()`` defaults (1.6 B parameters, 3072 decoder positions) with
the sampling settings the published checkpoint's ``generation_config.json``
carries, and a ``DacConfig(sampling_rate=44100)`` codec, under
``var/fullsize/{dia,dac}`` (once; delete the folder to rebuild). Then it
starts synth from those folders through the real loading code (DIA_MODEL and
DAC_MODEL set to them) and sends one short request with a voice prompt and
one without. It prints the load time, synth's resident memory, seconds per
generated frame and each answer's audio length and rate, and exits non-zero
on any error. Not part of `make test`: it takes minutes and about 8 GB.

The audio is noise (random weights); what is checked is that the real
architecture loads, generates within its positions and decodes at 44.1 kHz.
"""

from __future__ import annotations

import asyncio
import io
import os
import pathlib
import sys
import time
import wave

import grpc
import numpy as np

from tools.mesh import ROOT, Mesh, free_port, mesh_environment

FOLDER = ROOT / "var" / "fullsize"
# Short answers: the machine is small and shared; a frame takes about 0.3 s on 2 cores.
MAX_NEW_TOKENS = 40
PROMPT_SECONDS = 2.0
# What Dia's published conversion writes into generation_config.json (see issue 10).
CHECKPOINT_SAMPLING = dict(do_sample=True, temperature=1.2, top_k=45, top_p=0.95, guidance_scale=3.0)


def build(folder: pathlib.Path) -> None:
    import torch
    from transformers import DacConfig, DacModel, DiaConfig, DiaForConditionalGeneration, GenerationConfig

    if (folder / "dia" / "model.safetensors").exists() and (folder / "dac" / "model.safetensors").exists():
        print(f"full-size models already under {folder}")
        return
    began = time.monotonic()
    torch.manual_seed(0)
    config = DiaConfig()
    dia = DiaForConditionalGeneration(config)
    decoder = config.decoder_config
    dia.generation_config = GenerationConfig(
        bos_token_id=decoder.bos_token_id,
        eos_token_id=decoder.eos_token_id,
        pad_token_id=decoder.pad_token_id,
        decoder_start_token_id=decoder.bos_token_id,
        max_length=decoder.max_position_embeddings,
        **CHECKPOINT_SAMPLING,
    )
    dia.save_pretrained(folder / "dia")
    parameters = sum(p.numel() for p in dia.parameters())
    del dia
    DacModel(DacConfig(sampling_rate=44100)).save_pretrained(folder / "dac")
    print(f"built full-size Dia ({parameters / 1e9:.2f} B parameters) and DAC in {time.monotonic() - began:.0f} s")


def rss_gib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def voice_prompt() -> bytes:
    """PROMPT_SECONDS of the hello fixture's speech, as the 44.1 kHz mono WAV synth takes."""
    with wave.open(str(ROOT / "tests" / "fixtures" / "speech_hello.wav")) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float64)
    times = np.arange(int(PROMPT_SECONDS * 44100)) / 44100
    resampled = np.interp(times, np.arange(samples.size) / rate, samples).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(44100)
        writer.writeframes(resampled.tobytes())
    return buffer.getvalue()


async def smoke() -> int:
    from voice.synth.v1 import synth_pb2, synth_pb2_grpc

    env = mesh_environment(None)
    env.update(
        DIA_MODEL=str(FOLDER / "dia"),
        DAC_MODEL=str(FOLDER / "dac"),
        SYNTH_DEVICE="cpu",
        SYNTH_GRPC_PORT=str(free_port()),
        SYNTH_METRICS_PORT=str(free_port()),
        GATEWAY_ADDR=f"127.0.0.1:{free_port()}",  # no gateway: heartbeats go nowhere
    )
    synth = Mesh(["synth"], env)
    synth.echo = False
    began = time.monotonic()
    await synth.start_service("synth")
    pid = synth.processes["synth"].pid
    try:
        await synth.wait_serving("synth", timeout=1200)
        # Weights are memory-mapped: they become resident as the first generation reads them.
        print(f"load: {time.monotonic() - began:.1f} s to SERVING; resident memory {rss_gib(pid):.2f} GiB")
        async with grpc.aio.insecure_channel(synth.address("synth")) as channel:
            stub = synth_pb2_grpc.SynthServiceStub(channel)
            cases = {
                "without a prompt": synth_pb2.SynthesisSpec(script="[S1] Hello there."),
                "with a voice prompt": synth_pb2.SynthesisSpec(
                    script="[S1] Hello there.",
                    audio_prompt=synth_pb2.AudioPrompt(
                        wav=voice_prompt(), transcript="[S1] Hello world, this is a voice"
                    ),
                ),
            }
            for name, synthesis in cases.items():
                synthesis.settings.max_new_tokens = MAX_NEW_TOKENS
                synthesis.settings.seed = 1
                request = synth_pb2.SynthesizeRequest(synthesis=synthesis)
                started = time.monotonic()
                reply = await stub.Synthesize(request, timeout=1200)
                seconds = time.monotonic() - started
                with wave.open(io.BytesIO(reply.wav)) as reader:
                    rate, samples = reader.getframerate(), reader.getnframes()
                print(
                    f"{name}: {reply.generated_frames} frames in {seconds:.1f} s "
                    f"({seconds / reply.generated_frames:.2f} s a frame); audio {samples / rate:.2f} s "
                    f"({samples} samples) at {rate} Hz; resident memory {rss_gib(pid):.2f} GiB; "
                    f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
                )
                if rate != 44100 or samples == 0:
                    raise RuntimeError(f"{name}: expected 44.1 kHz audio, got {samples} samples at {rate} Hz")
        return 0
    except Exception as error:  # noqa: BLE001 - the smoke reports any failure and exits non-zero
        print(f"smoke failed: {error}", file=sys.stderr)
        print("\n".join(synth.log_lines["synth"][-30:]), file=sys.stderr)
        return 1
    finally:
        await synth.stop()


def main() -> int:
    os.chdir(ROOT)
    build(FOLDER)
    return asyncio.run(smoke())


if __name__ == "__main__":
    sys.exit(main())
