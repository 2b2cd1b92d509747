"""Settings of the synth service (environment variables).

`DIA_MODEL` and `DAC_MODEL` keep the names the issue gives them (no `SYNTH_`
prefix): they name models, and the same names are used by Dia's own tools.
"""

from __future__ import annotations

import pathlib
import socket

from runtime import config, provider_credentials
from runtime.config import at_least, boolean, one_of, setting

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

# The name under which DIA_MODEL selects the tiny random-weight model.
TINY_MODEL_NAME = "tiny-random"
HUB_DIA_MODEL = "nari-labs/Dia-1.6B-0626"
HUB_DAC_MODEL = "descript/dac_44khz"


SYNTH_MODELS_DIR = setting(
    "SYNTH_MODELS_DIR",
    "var/models",
    "folder (relative to the repository root unless absolute) where `make tiny-models` writes "
    f"the test model and where DIA_MODEL={TINY_MODEL_NAME} looks for it",
)


def models_dir() -> pathlib.Path:
    return ROOT / SYNTH_MODELS_DIR.value  # an absolute setting replaces ROOT


def tiny_model_dir() -> pathlib.Path:
    return models_dir() / TINY_MODEL_NAME


DIA_MODEL = setting(
    "DIA_MODEL",
    HUB_DIA_MODEL,
    "Dia checkpoint: a Hugging Face hub id (downloaded at start-up), a local folder, or "
    f"`{TINY_MODEL_NAME}` for the tiny random-weight test model (built on first use; its audio is noise)",
)


def _default_dac_model() -> str:
    return str(tiny_model_dir() / "dac") if DIA_MODEL.value == TINY_MODEL_NAME else HUB_DAC_MODEL


_default_dac_model.__doc__ = f"{HUB_DAC_MODEL}; the tiny codec when DIA_MODEL={TINY_MODEL_NAME}"

DAC_MODEL = setting(
    "DAC_MODEL",
    _default_dac_model,
    "DAC audio codec Dia's codes decode with: a hub id or a local folder "
    "(Dia's processor does not save its codec, so it is named separately)",
)
SYNTH_DEVICE = setting(
    "SYNTH_DEVICE",
    "auto",
    "where Dia runs: auto (CUDA in bfloat16 when present, else CPU in float32), cpu or cuda",
    one_of("auto", "cpu", "cuda"),
)
SYNTH_DTYPE = setting(
    "SYNTH_DTYPE",
    "auto",
    "precision of Dia's weights: auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 (also on "
    "CPUs with bfloat16 instructions, several times faster there) or float16 (CUDA only); the codec stays float32",
    one_of("auto", "float32", "bfloat16", "float16"),
)
SYNTH_COMPILE = setting(
    "SYNTH_COMPILE",
    False,
    "run each decoder step through torch.compile (on CUDA mode reduce-overhead: CUDA graphs; rows are "
    "padded to powers of two so that shapes repeat). Off by default: each new batch shape waits for a "
    "compilation first (tens of seconds), which pays off only over long runs",
    boolean,
)
SYNTH_TORCH_THREADS = setting(
    "SYNTH_TORCH_THREADS", 2, "CPU threads torch uses for one generation (at least 1)", at_least(1)
)
SYNTH_MAX_BATCH_SIZE = setting(
    "SYNTH_MAX_BATCH_SIZE",
    4,
    "most requests generated at once (rows of the running batch, seeded requests' own lanes included); "
    "also the capacity the provider advertises",
    at_least(1),
)
SYNTH_MAX_BATCH_FRAMES = setting(
    "SYNTH_MAX_BATCH_FRAMES",
    32768,
    "key/value-cache budget: the frames all running requests may hold together, each counting its voice "
    "prompt plus its max_new_tokens; a request that would pass it waits for room (one alone always runs)",
    at_least(1),
)
SYNTH_PROMPT_CACHE_BYTES = setting(
    "SYNTH_PROMPT_CACHE_BYTES",
    64 * 1024 * 1024,
    "bytes of voice-prompt codec codes kept (least recently used dropped first): a prompt of the caller's "
    "samples by their ids, versions and cut, with its transcript; one sent as audio by its content hash. So "
    "the same voices are fetched and encoded once; 0 turns the cache off",
    at_least(0),
)
SYNTH_BATCH_WINDOW_MS = setting(
    "SYNTH_BATCH_WINDOW_MS",
    20.0,
    "how long an idle generator waits for more requests to start with the first, in milliseconds "
    "(later ones join the running batch at its next step)",
    at_least(0.0, float),
)
SYNTH_MAX_QUEUE = setting(
    "SYNTH_MAX_QUEUE",
    16,
    "requests that may wait beyond a full batch (SYNTH_MAX_BATCH_SIZE); past that, "
    "RESOURCE_EXHAUSTED (SYNTH_BUSY)",
    at_least(0),
)
SYNTH_STEP_RETRIES = setting(
    "SYNTH_STEP_RETRIES",
    1,
    "times a request is generated again, alone, after a decode step it was in failed (out of memory, a device "
    "error), before it fails with GENERATION_FAILED; 0: every request of a failed step fails with it",
    at_least(0),
)
SYNTH_MAX_NEW_TOKENS = setting(
    "SYNTH_MAX_NEW_TOKENS",
    4096,
    "largest max_new_tokens (audio frames, about 86 a second) a request may ask for",
    at_least(17),
)
SYNTH_STREAM_FIRST_CHUNK_FRAMES = setting(
    "SYNTH_STREAM_FIRST_CHUNK_FRAMES",
    43,
    "streamed synthesis: audio frames (512 samples, about 11.6 ms each) in the first chunk sent; "
    "43 is 0.5 s. Fewer: earlier first audio, more small chunks",
    at_least(1),
)
SYNTH_STREAM_CHUNK_FRAMES = setting(
    "SYNTH_STREAM_CHUNK_FRAMES",
    43,
    "streamed synthesis: audio frames in each later chunk (43 is 0.5 s)",
    at_least(1),
)
SYNTH_STREAM_CONTEXT_FRAMES = setting(
    "SYNTH_STREAM_CONTEXT_FRAMES",
    16,
    "streamed synthesis: frames of codes decoded on each side of a chunk so that its edges match the "
    "whole decoded at once (the codec's receptive field); each chunk waits for this many frames after it",
    at_least(0),
)
SYNTH_MAX_AUDIO_PROMPT_SECONDS = setting(
    "SYNTH_MAX_AUDIO_PROMPT_SECONDS",
    120.0,
    "longest voice-cloning prompt accepted, in seconds: a prompt sent as audio or codes longer fails with "
    "AUDIO_TOO_LONG, and a prompt of the caller's samples may be asked for at most this long (the gateway "
    "asks for the request's max_audio_prompt_seconds)",
    at_least(0.1, float),
)
SYNTH_HEARTBEAT_SECONDS = setting(
    "SYNTH_HEARTBEAT_SECONDS",
    5.0,
    "seconds between heartbeats to the gateway's provider registry, unless the registry asks for another interval",
    at_least(0.1, float),
)


def _default_advertise_address() -> str:
    return f"127.0.0.1:{config.SERVICES['synth'].grpc_port.value}"


_default_advertise_address.__doc__ = "127.0.0.1:$SYNTH_GRPC_PORT"

SYNTH_ADVERTISE_ADDRESS = setting(
    "SYNTH_ADVERTISE_ADDRESS",
    _default_advertise_address,
    "host:port the gateway reaches this provider at (in Kubernetes, the pod IP)",
)


def _default_provider_id() -> str:
    return f"{socket.gethostname()}:{config.SERVICES['synth'].grpc_port.value}"


_default_provider_id.__doc__ = "$HOSTNAME:$SYNTH_GRPC_PORT"

SYNTH_PROVIDER_ID = setting(
    "SYNTH_PROVIDER_ID",
    _default_provider_id,
    "stable id of this provider in the gateway's registry",
)
SYNTH_PROVIDER_TOKEN = setting(
    "SYNTH_PROVIDER_TOKEN",
    "",
    "this provider's own registry credential, as `python -m tools.provider_token <SYNTH_PROVIDER_ID>` "
    "prints it: lets it register under that id alone without knowing PROVIDER_SECRET; unset, it is "
    "derived from PROVIDER_SECRET",
    secret=True,
)


def provider_token() -> str:
    """The credential heartbeats carry: SYNTH_PROVIDER_TOKEN, else derived from PROVIDER_SECRET ("" without either)."""
    secret = provider_credentials.PROVIDER_SECRET.value
    return SYNTH_PROVIDER_TOKEN.value or (secret and provider_credentials.token(secret, SYNTH_PROVIDER_ID.value))
