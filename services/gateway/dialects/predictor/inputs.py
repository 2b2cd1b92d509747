"""The model's input (PredictionInput) translated into a GenerationSpec, and its OpenAPI schema.

The input's names, ranges and defaults are the model page's
(../shared/spec/dia-model-input-schema.md), declared on PredictionInput in
predictions.proto: temperature 1.3, cfg_filter_top_k 35, speed_factor 0.94
by default, temperature 0 for greedy decoding, max_new_tokens from 500.
They are checked here; the spec handed to the pipeline has every parameter
set, so this API's own defaults never apply to a prediction.
"""

from __future__ import annotations

import json

from runtime import fields
from runtime.errors import ApiError
from services.gateway.config import MAX_INPUT_CHARS
from services.gateway.generation import request, script
from voice.gateway.v1 import generations_pb2
from voice.predictor.v1 import predictions_pb2

INPUT = predictions_pb2.PredictionInput.DESCRIPTOR
# Errors name the input's fields as the client sent them.
PUBLIC_NAMES = {name: f"input.{name}" for name in INPUT.fields_by_name}
AUDIO_PROMPT = "input.audio_prompt"


def checked(given: predictions_pb2.PredictionInput) -> None:
    """The input against the model page's rules, its text first; errors name "input.<field>"."""
    try:
        fields.check_field(given, "text")
        script.parse_script(given.text, MAX_INPUT_CHARS.value)
        fields.check(given)
    except ApiError as error:
        if error.param in PUBLIC_NAMES:
            error.param = PUBLIC_NAMES[error.param]
        raise


def generation_spec(given: predictions_pb2.PredictionInput, model: str, voice: int | None) -> generations_pb2.GenerationSpec:
    """A checked input as the generation it asks for: every parameter set from the input or the page's
    defaults, S1 cloned from `voice` (the sample its audio_prompt became) when there is one."""
    spec = generations_pb2.GenerationSpec(input=given.text, model=model)
    for field in generations_pb2.GenerationParameters.DESCRIPTOR.fields:
        if field.name in INPUT.fields_by_name and field.name != "seed":
            setattr(spec, field.name, fields.value(given, field.name))
    spec.seed = given.seed if given.HasField("seed") else request.RANDOM_SEED
    if voice is not None:
        spec.speakers["S1"] = voice
    return spec


def schema() -> dict:
    """The model's OpenAPI schema: the page's Input (names, types, defaults, ranges, descriptions) and Output."""
    properties: dict[str, dict] = {}
    for order, field in enumerate(INPUT.fields):
        declared = fields.rules(field)
        kind = "string" if field.type == field.TYPE_STRING else "number" if field.cpp_type == field.CPPTYPE_DOUBLE else "integer"
        described: dict = {"type": kind, "title": field.name.replace("_", " ").title(), "x-order": order}
        if field.name == "audio_prompt":
            described["format"] = "uri"
        if declared is not None:
            if declared.HasField("minimum") and not (field.name == "seed"):
                described["minimum"] = _number(declared.minimum)
            if declared.HasField("maximum"):
                described["maximum"] = _number(declared.maximum)
            if declared.default:
                described["default"] = json.loads(declared.default)
        described["description"] = SCHEMA_DESCRIPTIONS[field.name]
        properties[field.name] = described
    return {
        "openapi": "3.0.2",
        "info": {"title": "Dia", "version": "1.0.0"},
        "paths": {},
        "components": {
            "schemas": {
                "Input": {"type": "object", "title": "Input", "required": ["text"], "properties": properties},
                "Output": {"type": "string", "title": "Output", "format": "uri"},
            }
        },
    }


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


# The page's descriptions, word for word.
SCHEMA_DESCRIPTIONS = {
    "best_of": "Candidates generated side by side, each with its own seed; the one whose speech recognition and "
    "voice similarity score best is returned (1-4; 1 = a single generation).",
    "text": "Input text for dialogue generation. Use [S1], [S2] to indicate different speakers and (description) "
    "in parentheses for non-verbal cues e.g., (laughs), (whispers).",
    "audio_prompt": "Optional audio file (.wav/.mp3/.flac) for voice cloning. The model will attempt to mimic this "
    "voice style.",
    "max_new_tokens": "Controls the length of generated audio. Higher values create longer audio (86 tokens ≈ 1 "
    "second of audio).",
    "max_audio_prompt_seconds": "Maximum duration in seconds for the input voice cloning audio prompt. Only used "
    "when an audio prompt is provided. Longer voice samples are truncated to this length.",
    "cfg_scale": "How closely the audio follows the text. Higher values (3-5) follow text more strictly; lower "
    "values may sound more natural but deviate more.",
    "temperature": "Randomness. Higher values (1.3-2.0) increase variety; lower values make output more "
    "consistent. 0 = deterministic (greedy) generation.",
    "top_p": "Nucleus sampling threshold.",
    "cfg_filter_top_k": "Filtering of audio generation tokens. Higher values allow more diverse sounds; lower "
    "values create more consistent audio.",
    "speed_factor": "Playback speed of the generated audio. Below 1.0 slows the audio down; 1.0 is original speed.",
    "seed": "Random seed: the same seed with identical inputs gives the same output. Blank = random each time.",
}
