"""The checks of a generation request, as units: every range of the public
spec at both edges (the HTTP tests cover the same edges end to end)."""

from __future__ import annotations

import math

import pytest
from google.protobuf.descriptor import FieldDescriptor

from runtime import fields as field_rules
from runtime.errors import ApiError
from services.gateway.generation.pipeline import fitted_max_new_tokens, fitted_prompt_seconds, synth_settings
from services.gateway.generation.routing import ModelLimits
from services.gateway.generation.request import RANDOM_SEED, Limits, plan
from voice.gateway.v1 import generations_pb2

LIMITS = Limits(max_input_chars=50, max_collection_chars=10)
# Each bounded parameter's (lowest, highest, default), as the spec's proto declares them.
RANGES = {
    name: bounds
    for name, bounds in field_rules.bounds(generations_pb2.GenerationSpec.DESCRIPTOR).items()
    if name != "seed"
}


def request(**fields) -> generations_pb2.GenerationSpec:
    fields.setdefault("input", "[S1] Hello.")
    return generations_pb2.GenerationSpec(**fields)


def refusal(**fields) -> ApiError:
    with pytest.raises(ApiError) as caught:
        plan(request(**fields), LIMITS)
    return caught.value


def test_left_out_parameters_take_the_public_defaults():
    parameters = plan(request(), LIMITS).parameters
    assert (parameters.cfg_scale, parameters.temperature, parameters.top_p) == (3.0, 1.8, 0.95)
    assert (parameters.cfg_filter_top_k, parameters.speed_factor, parameters.max_new_tokens) == (45, 1.0, 3072)
    assert (parameters.seed, parameters.max_audio_prompt_seconds) == (RANDOM_SEED, 10.0)


@pytest.mark.parametrize("name", list(RANGES))
def test_each_range_holds_at_both_edges(name):
    low, high, _ = RANGES[name]
    field = generations_pb2.GenerationSpec.DESCRIPTOR.fields_by_name[name]
    step = 0.001 if field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE else 1  # whole numbers step by one
    for value in (low, high):
        assert getattr(plan(request(**{name: value}), LIMITS).parameters, name) == value
    for value in (low - step, high + step):
        error = refusal(**{name: value})
        assert (error.reason, error.param) == ("INVALID_PARAMETER", name)


@pytest.mark.parametrize("name", ["cfg_scale", "temperature", "top_p", "speed_factor", "max_audio_prompt_seconds"])
def test_not_a_number_is_out_of_every_range(name):
    assert refusal(**{name: math.nan}).param == name


def test_seed_minus_one_or_left_out_is_random_and_zero_up_is_fixed():
    assert plan(request(seed=-1), LIMITS).parameters.seed == RANDOM_SEED
    assert not synth_settings(plan(request(), LIMITS).parameters).HasField("seed")
    assert synth_settings(plan(request(seed=0), LIMITS).parameters).seed == 0
    assert refusal(seed=-2).param == "seed"


def test_visibility_is_private_by_default_and_one_of_three():
    assert plan(request(), LIMITS).visibility == "private"
    for visibility in ("private", "unlisted", "public"):
        assert plan(request(visibility=visibility), LIMITS).visibility == visibility
    assert refusal(visibility="Public").param == "visibility"


def test_collection_limit_is_a_setting_at_its_edge():
    assert plan(request(collection="c" * 10), LIMITS).collection == "c" * 10
    assert refusal(collection="c" * 11).param == "collection"


def test_input_limit_is_a_setting_at_its_edge():
    text = "[S1] " + "a" * 45
    assert plan(request(input=text), LIMITS).script.text == text
    error = refusal(input=text + "a")
    assert (error.reason, error.param) == ("REQUEST_TOO_LARGE", "input")


def test_speakers_are_s1_then_s2_and_nothing_else():
    assert list(plan(request(speakers={"S2": 5, "S1": 4}), LIMITS).speakers.items()) == [("S1", 4), ("S2", 5)]
    assert refusal(speakers={"S1": 4, "S3": 5}).param == "speakers"
    assert refusal(speakers={"s1": 4}).param == "speakers"


def test_the_script_is_checked_first():
    assert refusal(input="", cfg_scale=99).reason == "MISSING_INPUT"
    assert refusal(input="[S2] Hi", cfg_scale=99).reason == "INVALID_SCRIPT"


def test_every_max_new_tokens_the_spec_allows_is_fitted_to_dias_decoder():
    dia = ModelLimits()  # Dia-1.6B: 3072 decoder positions, the prompt's frames and the new ones together
    low, high, default = RANGES["max_new_tokens"]
    assert (low, high, default) == (256, 4096, 3072)
    assert fitted_max_new_tokens(high, 0, dia) == 3072  # no prompt: all of the decoder
    # A 3.5 s voice prompt is 302 frames of 512 samples at 44.1 kHz: 2770 are left for new ones.
    assert fitted_max_new_tokens(default, 302, dia) == 2770
    assert fitted_max_new_tokens(high, 302, dia) == 2770
    assert fitted_max_new_tokens(low, 302, dia) == low  # what fits is kept as asked
    assert fitted_max_new_tokens(2770, 302, dia) == 2770  # exactly at the edge


def test_a_prompt_is_cut_to_leave_room_for_the_least_max_new_tokens():
    dia = ModelLimits()
    assert fitted_prompt_seconds(10, dia) == 10
    longest = fitted_prompt_seconds(120, dia)
    assert longest == 32.69  # (3072 - 256) frames of 512 samples at 44.1 kHz
    frames = math.ceil(round(longest * dia.sample_rate) / dia.samples_per_frame)
    assert fitted_max_new_tokens(4096, frames, dia) >= 256


def test_a_prompt_that_fills_the_decoder_is_refused_naming_its_length():
    with pytest.raises(ApiError) as caught:
        fitted_max_new_tokens(256, 3072 - 16, ModelLimits())
    assert (caught.value.reason, caught.value.param) == ("INVALID_PARAMETER", "max_audio_prompt_seconds")
