"""What a generation request asks for, checked against the public spec
(../shared/spec/voice-generations-api.txt) before anything is generated.

:func:`plan` turns a ``CreateGenerationRequest`` into a :class:`Plan` (the
normalized script, the cloned speakers, the effective parameters with their
defaults filled in, and the sharing fields) or raises the ApiError a user
gets: ``missing_input``, ``invalid_script`` or ``request_too_large`` for the
script (see script.py), ``invalid_parameter`` naming the field for anything
else. The ranges are the public API's contract, not settings; the lengths of
``input`` and ``collection`` are settings (GATEWAY_MAX_INPUT_CHARS,
GATEWAY_MAX_COLLECTION_CHARS).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import invalid_parameter
from services.gateway import script as scripts
from voice.gateway.v1 import generations_pb2
from voice.synth.v1 import synth_pb2


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float
    default: float


# Field → (lowest, highest, default), in the order of the request message.
RANGES = {
    "cfg_scale": Bounds(1.0, 5.0, 3.0),
    "temperature": Bounds(0.1, 2.0, 1.8),
    "top_p": Bounds(0.1, 1.0, 0.95),
    "cfg_filter_top_k": Bounds(1, 100, 45),
    "speed_factor": Bounds(0.5, 2.0, 1.0),
    "max_new_tokens": Bounds(256, 4096, 3072),
    "max_audio_prompt_seconds": Bounds(1.0, 120.0, 10.0),
}
# "Omit (or -1) for random."
RANDOM_SEED = -1
VISIBILITIES = ("private", "unlisted", "public")
DEFAULT_VISIBILITY = "private"
# The speakers a voice sample can clone, in the order their clips are joined.
SPEAKER_TAGS = ("S1", "S2")


@dataclass(frozen=True)
class Limits:
    max_input_chars: int
    max_collection_chars: int


@dataclass(frozen=True)
class Plan:
    """A request that passed every check: what the gateway goes on to generate."""

    script: scripts.Script
    model: str  # "" to auto-select
    speakers: dict[str, int]  # "S1"/"S2" → voice-sample id, S1 first
    parameters: generations_pb2.GenerationParameters  # defaults filled; seed -1 = random
    visibility: str
    collection: str


def plan(request: generations_pb2.CreateGenerationRequest, limits: Limits) -> Plan:
    """Check a request in the order a user reads it: script, speakers, settings, sharing."""
    script = scripts.parse_script(request.input, limits.max_input_chars)
    speakers = _speakers(request.speakers)
    parameters = requested_parameters(request)
    for name, bounds in RANGES.items():
        value = getattr(parameters, name)
        if not bounds.low <= value <= bounds.high:  # NaN fails too
            raise invalid_parameter(
                name, f"{name} must be between {bounds.low:g} and {bounds.high:g}, got {value:g}"
            )
    if parameters.seed < RANDOM_SEED:
        raise invalid_parameter("seed", f"seed must be 0 or more, or -1 (or omitted) for random; got {parameters.seed}")
    visibility = request.visibility or DEFAULT_VISIBILITY
    if visibility not in VISIBILITIES:
        raise invalid_parameter(
            "visibility", f"visibility must be one of {', '.join(VISIBILITIES)}; got {request.visibility!r}"
        )
    if len(request.collection) > limits.max_collection_chars:
        raise invalid_parameter(
            "collection",
            f"collection is {len(request.collection)} characters; the limit is {limits.max_collection_chars}",
        )
    return Plan(script, request.model, speakers, parameters, visibility, request.collection)


def requested_parameters(request: generations_pb2.CreateGenerationRequest) -> generations_pb2.GenerationParameters:
    """The parameters as asked for, unchecked, with defaults for those left out.

    Once checked these are the effective parameters; a refused request is
    stored with them too, so its history shows the value that was refused.
    """
    values = {name: bounds.default for name, bounds in RANGES.items()}
    values["seed"] = RANDOM_SEED
    for name in values:
        if request.HasField(name):
            values[name] = getattr(request, name)
    return generations_pb2.GenerationParameters(**values)


def synth_settings(parameters: generations_pb2.GenerationParameters) -> synth_pb2.GenerationSettings:
    """What the provider needs of them (the prompt length is the gateway's business)."""
    settings = synth_pb2.GenerationSettings(
        cfg_scale=parameters.cfg_scale,
        temperature=parameters.temperature,
        top_p=parameters.top_p,
        cfg_filter_top_k=parameters.cfg_filter_top_k,
        max_new_tokens=parameters.max_new_tokens,
        speed_factor=parameters.speed_factor,
    )
    if parameters.seed != RANDOM_SEED:
        settings.seed = parameters.seed
    return settings


def _speakers(requested) -> dict[str, int]:
    unknown = sorted(set(requested) - set(SPEAKER_TAGS))
    if unknown:
        raise invalid_parameter(
            "speakers",
            f"speakers maps \"S1\" and \"S2\" to voice-sample ids; {', '.join(map(repr, unknown))} "
            "is not a speaker tag that can be cloned",
        )
    return {tag: requested[tag] for tag in SPEAKER_TAGS if tag in requested}

