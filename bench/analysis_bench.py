"""Benchmark: what explaining every generation costs (issue 25), side by side in one run.

1. The STT service's cost per second of audio, on real speech (the espeak-ng two-voice dialogue,
   tests/fixtures/dialogue_two_voices.wav, 7.1 s): Transcribe alone (what the service did before),
   Transcribe with word timings, and AnalyzeSpeech (word timings, alignment to the script, word
   error rate, and the similarity of both cloned speakers' turns to their samples). Seconds of the
   service's time per audio second, one request at a time.
2. What best_of costs a generation's throughput: the whole mesh (tiny random-weight Dia), CONCURRENT
   callers each generating in a loop for --seconds, with best_of 1, 2 and 4 (analysis on), beside
   best_of 1 with the gateway's analysis off. Throughput is audio seconds returned per wall second.

    .venv/bin/python bench/analysis_bench.py [--rounds N] [--seconds S] [--frames N]

On the tiny model a generation is cheap and its noise short of words, so part 2 says what the extra
candidates and their analyses cost around a model, not how the 1.6B Dia batches on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import grpc

import harness

from runtime.server import channel_options
from tools import mesh as mesh_tools
from voice.stt.v1 import stt_pb2, stt_pb2_grpc

FIXTURES = harness.ROOT / "tests" / "fixtures"
SCRIPT = (
    "[S1] Good morning, how are you today? [S2] (laughs) I am fine, thank you for asking. "
    "[S1] The weather is lovely this morning."
)
CONCURRENT = 4
GENERATED = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."


async def stt_costs(rounds: int) -> None:
    dialogue = (FIXTURES / "dialogue_two_voices.wav").read_bytes()
    samples = [
        stt_pb2.SpeakerSample(speaker="S1", audio=(FIXTURES / "sample_voice_one.wav").read_bytes()),
        stt_pb2.SpeakerSample(speaker="S2", audio=(FIXTURES / "sample_voice_two.wav").read_bytes()),
    ]
    calls = {
        "Transcribe": ("Transcribe", stt_pb2.TranscribeRequest(audio=dialogue, language="en")),
        "Transcribe, word timings": (
            "Transcribe", stt_pb2.TranscribeRequest(audio=dialogue, language="en", word_timestamps=True)
        ),
        "AnalyzeSpeech (2 cloned speakers)": (
            "AnalyzeSpeech",
            stt_pb2.AnalyzeSpeechRequest(audio=dialogue, script=SCRIPT, language="en", speaker_samples=samples),
        ),
        "AnalyzeSpeech (nobody cloned)": (
            "AnalyzeSpeech", stt_pb2.AnalyzeSpeechRequest(audio=dialogue, script=SCRIPT, language="en")
        ),
        "CheckSample (a 5.4 s voice sample)": ("CheckSample", stt_pb2.CheckSampleRequest(audio=samples[0].audio)),
    }  # fmt: skip
    env = harness.mesh_env()
    async with harness.running(["transcode", "stt"], env) as mesh:
        async with grpc.aio.insecure_channel(mesh.address("stt"), options=channel_options()) as channel:
            stub = stt_pb2_grpc.SttServiceStub(channel)
            seconds: dict[str, list[float]] = {name: [] for name in calls}
            audio: dict[str, float] = {}  # seconds of audio each call is about
            for name, (method, request) in calls.items():  # warm-up
                audio[name] = (await getattr(stub, method)(request, timeout=600)).duration_seconds
            for _ in range(rounds):  # interleaved, so a busier moment of the machine is shared
                for name, (method, request) in calls.items():
                    began = time.perf_counter()
                    await getattr(stub, method)(request, timeout=600)
                    seconds[name].append(time.perf_counter() - began)
    print(f"STT service, the {audio['Transcribe']:.1f} s dialogue, median of {rounds} rounds, one request at a time:")
    base = statistics.median(seconds["Transcribe"]) / audio["Transcribe"]
    for name, values in seconds.items():
        per_second = statistics.median(values) / audio[name]
        print(f"  {name:36} {statistics.median(values):6.2f} s  {per_second:5.3f} s per audio second  "
              f"{per_second / base:4.2f}x Transcribe")


async def generate_in_a_loop(http, key: str, best_of: int, frames: int, until: float, audio: list[float]) -> None:
    while time.monotonic() < until:
        response = await http.post(
            "/v1/voice/generations",
            json={"input": GENERATED, "max_new_tokens": frames, "best_of": best_of},
            headers={"Authorization": f"Bearer {key}"},
        )
        body = await response.read()
        if response.status != 200:
            raise SystemExit(f"generation failed: {response.status} {body[:300]!r}")
        audio.append((len(body) - 44) / 2 / 44_100)


async def best_of_throughput(seconds: float, frames: int) -> None:
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            env = harness.mesh_env(database_url, **object_store)
            async with harness.running(mesh_tools.existing_services(), env) as mesh:
                keys = await harness.new_keys(database_url, CONCURRENT, "best-of")
                off_env = dict(env, GATEWAY_ANALYSIS="false")
                for name in ("GATEWAY_GRPC_PORT", "GATEWAY_METRICS_PORT", "GATEWAY_HTTP_PORT"):
                    off_env[name] = str(harness.free_port())
                async with harness.running(["gateway"], off_env):
                    rows = [("best_of 1, analysis off", off_env, 1)] + [
                        (f"best_of {n}, analysis on", env, n) for n in (1, 2, 4)
                    ]
                    results = []
                    for label, where, best_of in rows:
                        url = f"http://127.0.0.1:{where['GATEWAY_HTTP_PORT']}"
                        async with aiohttp.ClientSession(base_url=url) as http:
                            await harness.wait_for_providers(http, {"Authorization": f"Bearer {keys[0]}"})
                            await generate_in_a_loop(http, keys[0], best_of, frames, time.monotonic(), [])  # warm-up
                            audio: list[float] = []
                            began = time.monotonic()
                            until = began + seconds
                            await asyncio.gather(
                                *(generate_in_a_loop(http, key, best_of, frames, until, audio) for key in keys)
                            )
                            wall = time.monotonic() - began
                        results.append((label, len(audio), sum(audio) / wall))
                        print(f"  measured {label}", flush=True)
    print(f"Generations of {frames} frames, {CONCURRENT} callers in a loop for {seconds:.0f} s each, tiny model:")
    reference = results[1][2]  # best_of 1 with analysis on
    for label, count, rate in results:
        print(f"  {label:26} {count:4} generations  {rate:6.2f} audio s per s  {rate / reference:4.2f}x best_of 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the STT measurements")
    parser.add_argument("--seconds", type=float, default=30, help="seconds each best_of setting runs")
    parser.add_argument("--frames", type=int, default=256, help="max_new_tokens of each generation")
    parser.add_argument("--stt-only", action="store_true", help="only the STT service's costs")
    args = parser.parse_args()
    asyncio.run(stt_costs(args.rounds))
    if not args.stt_only:
        asyncio.run(best_of_throughput(args.seconds, args.frames))


if __name__ == "__main__":
    main()
