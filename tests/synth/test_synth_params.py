"""Generation parameters: defaults and ranges at their edges."""

from __future__ import annotations

import math

import grpc
import pytest

from runtime.errors import ApiError
from services.synth import params
from voice.synth.v1 import synth_pb2

LIMIT = 4096


def parse(**fields) -> params.GenerationParams:
    return params.from_proto(synth_pb2.GenerationSettings(**fields), LIMIT)


def refusal(**fields) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(**fields)
    return caught.value


def test_unset_fields_take_the_public_api_defaults():
    got = parse()
    assert (got.cfg_scale, got.temperature, got.top_p, got.cfg_filter_top_k, got.speed_factor) == (
        3.0, 1.8, 0.95, 45, 1.0
    )
    assert got.max_new_tokens == 3072
    assert got.seed is None and not got.seeded


def test_the_default_length_never_exceeds_a_lower_configured_limit():
    assert params.from_proto(synth_pb2.GenerationSettings(), 1000).max_new_tokens == 1000


@pytest.mark.parametrize(
    "name, low, high, below, above",
    [
        ("cfg_scale", 1.0, 5.0, 0.99, 5.01),
        ("temperature", 0.0, 2.0, -0.01, 2.01),
        ("top_p", 0.1, 1.0, 0.09, 1.01),
        ("cfg_filter_top_k", 1, 100, 0, 101),
        ("speed_factor", 0.5, 2.0, 0.49, 2.01),
    ],
)
def test_each_range_is_inclusive_and_a_step_outside_is_refused_naming_the_field(name, low, high, below, above):
    assert getattr(parse(**{name: low}), name) == low
    assert getattr(parse(**{name: high}), name) == high
    for value in (below, above):
        error = refusal(**{name: value})
        assert (error.code, error.reason, error.param) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", name
        )
        assert name in error.message


@pytest.mark.parametrize("name", ["cfg_scale", "temperature", "top_p", "speed_factor"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_not_a_number_and_infinity_are_refused(name, value):
    assert refusal(**{name: value}).param == name


def test_max_new_tokens_must_leave_a_frame_after_the_delay_tail():
    assert parse(max_new_tokens=17).max_new_tokens == 17
    for value in (16, 1, 0, -5):
        error = refusal(max_new_tokens=value)
        assert (error.reason, error.param) == ("INVALID_PARAMETER", "max_new_tokens")
    assert "delay tail" in refusal(max_new_tokens=16).message


def test_max_new_tokens_is_capped_by_the_configured_limit():
    assert parse(max_new_tokens=LIMIT).max_new_tokens == LIMIT
    error = refusal(max_new_tokens=LIMIT + 1)
    assert (error.param, str(LIMIT) in error.message) == ("max_new_tokens", True)


def test_seed_minus_one_means_random_and_other_negatives_are_refused():
    assert parse(seed=-1).seed is None
    assert parse(seed=0).seed == 0 and parse(seed=0).seeded
    assert parse(seed=2**63 - 1).seed == 2**63 - 1
    assert refusal(seed=-2).param == "seed"


def test_random_seeds_fit_in_a_json_number():
    seeds = {params.random_seed() for _ in range(200)}
    assert len(seeds) > 190
    assert all(0 <= seed < 2**32 for seed in seeds)
