"""What a generation asks for: a GenerationSpec checked and turned into a :class:`Plan`.

:func:`plan` checks a spec in the order a user reads it (script, speakers,
then every other field against the rules its proto declares: this API's
ranges, defaults and lengths, ../shared/spec/voice-generations-api.txt) and
raises the ApiError a user gets: ``missing_input``, ``invalid_script`` or
``request_too_large`` for the script (script.py), ``invalid_parameter``
naming the field for anything else.

A dialect (dialects/) checks its own request against its own rules, then
hands the pipeline a spec with every parameter set: :func:`plan` with
``rules=False`` takes its values as they are, the script and speakers still
checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime import fields
from runtime.errors import invalid_parameter
from services.gateway.config import MAX_COLLECTION_CHARS, MAX_INPUT_CHARS
from services.gateway.generation import script as scripts
from voice.gateway.v1 import generations_pb2

SPEC = generations_pb2.GenerationSpec.DESCRIPTOR
# "Omit (or -1) for random."
RANDOM_SEED = fields.default(SPEC.fields_by_name["seed"])
DEFAULT_VISIBILITY = fields.default(SPEC.fields_by_name["visibility"])
# The speakers a voice sample can clone, in the order their clips are joined.
SPEAKER_TAGS = ("S1", "S2")


@dataclass(frozen=True)
class Limits:
    max_input_chars: int
    max_collection_chars: int

    @classmethod
    def configured(cls) -> "Limits":
        return cls(MAX_INPUT_CHARS.value, MAX_COLLECTION_CHARS.value)

    def as_limits(self) -> dict[str, int]:
        """The values of the limits the field rules name (runtime.fields), by their names."""
        return {"input_chars": self.max_input_chars, "collection_chars": self.max_collection_chars}


@dataclass(frozen=True)
class Plan:
    """A generation that passed every check: what the pipeline goes on to generate."""

    script: scripts.Script
    model: str  # "" to auto-select
    speakers: dict[str, int]  # "S1"/"S2" → voice-sample id, S1 first
    parameters: generations_pb2.GenerationParameters  # defaults filled; seed -1 = random
    visibility: str
    collection: str


def plan(spec: generations_pb2.GenerationSpec, limits: Limits, rules: bool = True) -> Plan:
    """Check a spec (see the module's docstring); `rules=False` for a dialect's, already checked."""
    published = limits.as_limits()
    fields.check_field(spec, "input", published)
    script = scripts.parse_script(spec.input, limits.max_input_chars)
    speakers = _speakers(spec.speakers)
    if rules:
        fields.check(spec, published)
    if spec.stream and fields.value(spec, "best_of") > 1:
        raise invalid_parameter(
            "best_of", "best_of above 1 is not possible with stream: the audio is sent as it is made, before "
            "candidates could be compared; use best_of 1 or stream false"
        )
    return Plan(
        script,
        spec.model,
        speakers,
        parameters_of(spec),
        fields.value(spec, "visibility"),
        spec.collection,
    )


def parameters_of(spec: generations_pb2.GenerationSpec) -> generations_pb2.GenerationParameters:
    """The parameters as asked for, with this API's defaults for those left out."""
    names = generations_pb2.GenerationParameters.DESCRIPTOR.fields_by_name
    return generations_pb2.GenerationParameters(**{name: fields.value(spec, name) for name in names})


def spec_of(row_input: str, model: str, speakers: dict[str, int], parameters: generations_pb2.GenerationParameters,
            visibility: str, collection: str) -> generations_pb2.GenerationSpec:
    """A stored generation as the spec that makes it again (a background job resumed elsewhere)."""
    spec = generations_pb2.GenerationSpec(
        input=row_input, model=model, speakers=speakers, visibility=visibility, collection=collection
    )
    for field in generations_pb2.GenerationParameters.DESCRIPTOR.fields:
        setattr(spec, field.name, getattr(parameters, field.name))
    return spec


def _speakers(requested) -> dict[str, int]:
    unknown = sorted(set(requested) - set(SPEAKER_TAGS))
    if unknown:
        raise invalid_parameter(
            "speakers",
            f"speakers maps \"S1\" and \"S2\" to voice-sample ids; {', '.join(map(repr, unknown))} "
            "is not a speaker tag that can be cloned",
        )
    return {tag: requested[tag] for tag in SPEAKER_TAGS if tag in requested}
