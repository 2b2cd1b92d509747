"""What a generation request asks for, checked against the public spec
(../shared/spec/voice-generations-api.txt) before anything is generated.

:func:`plan` turns a ``CreateGenerationRequest`` into a :class:`Plan` (the
normalized script, the cloned speakers, the effective parameters with their
defaults filled in, and the sharing fields) or raises the ApiError a user
gets: ``missing_input``, ``invalid_script`` or ``request_too_large`` for the
script (see script.py), ``invalid_parameter`` naming the field for anything
else. The fields' ranges, defaults and lengths are declared on the request
message in generations.proto and checked by runtime.fields; the lengths of
``input`` and ``collection`` are settings (GATEWAY_MAX_INPUT_CHARS,
GATEWAY_MAX_COLLECTION_CHARS).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime import fields
from runtime.errors import invalid_parameter
from services.gateway.generation import script as scripts
from voice.gateway.v1 import generations_pb2
from voice.synth.v1 import synth_pb2


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float
    default: float


# Field → (lowest, highest, default), in the order of the request message,
# as its proto declares them.
RANGES = {
    name: Bounds(*declared)
    for name, declared in fields.bounds(generations_pb2.CreateGenerationRequest.DESCRIPTOR).items()
    if name != "seed"
}
# "Omit (or -1) for random."
RANDOM_SEED = fields.default(generations_pb2.CreateGenerationRequest.DESCRIPTOR.fields_by_name["seed"])
VISIBILITIES = tuple(
    fields.rules(generations_pb2.CreateGenerationRequest.DESCRIPTOR.fields_by_name["visibility"]).one_of
)
DEFAULT_VISIBILITY = fields.default(generations_pb2.CreateGenerationRequest.DESCRIPTOR.fields_by_name["visibility"])
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
    chosen_max_new_tokens: bool  # the caller set max_new_tokens (else a default the provider may lower)
    visibility: str
    collection: str


def plan(request: generations_pb2.CreateGenerationRequest, limits: Limits) -> Plan:
    """Check a request in the order a user reads it: script, speakers, then every other field
    against the rules its proto declares."""
    overrides = {"input_chars": limits.max_input_chars, "collection_chars": limits.max_collection_chars}
    fields.check_field(request, "input", overrides)
    script = scripts.parse_script(request.input, limits.max_input_chars)
    speakers = _speakers(request.speakers)
    fields.check(request, overrides)
    return Plan(
        script,
        request.model,
        speakers,
        requested_parameters(request),
        request.HasField("max_new_tokens"),
        fields.value(request, "visibility"),
        request.collection,
    )


def requested_parameters(request: generations_pb2.CreateGenerationRequest) -> generations_pb2.GenerationParameters:
    """The parameters as asked for, unchecked, with defaults for those left out.

    Once checked these are the effective parameters; a refused request is
    stored with them too, so its history shows the value that was refused.
    """
    names = generations_pb2.GenerationParameters.DESCRIPTOR.fields_by_name
    return generations_pb2.GenerationParameters(**{name: fields.value(request, name) for name in names})


def synth_settings(
    parameters: generations_pb2.GenerationParameters, chosen_max_new_tokens: bool = True
) -> synth_pb2.GenerationSettings:
    """What the provider needs of them (the prompt length is the gateway's business).

    A max_new_tokens the caller did not choose (the default, or the speech
    endpoint's budget) may be lowered by the provider to what Dia's decoder
    has room for beside the prompt; one they chose is refused if it does not fit.
    """
    settings = synth_pb2.GenerationSettings(
        lower_max_new_tokens_to_fit=not chosen_max_new_tokens,
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

