"""The sampler alone, on made-up logits: temperature below 1 really applies (transformers' Dia would
clamp it to 1), 0 is greedy, top-k and top-p narrow the draws, each request draws from its own
generator, Dia's end rules, and a row left no token fails alone. Then on the tiny Dia, through the runner."""

from __future__ import annotations

import pytest
import torch

from services.synth.engine.prompts import Preparer
from services.synth.engine.request import RowSettings
from services.synth.engine.runner import DecodeBatch
from services.synth.engine.sampler import Sampler, SamplingMetadata
from services.synth.params import FRAMES_WITHOUT_AUDIO

CHANNELS, VOCAB, EOS, PAD = 9, 1028, 1024, 1025
DELAYS = [0, 8, 9, 10, 11, 12, 13, 14, 15]
SAMPLER = Sampler(CHANNELS, VOCAB, EOS, PAD, DELAYS, "cpu")


def rows(*settings: RowSettings, positions=None, prefill: int = 1) -> SamplingMetadata:
    generators = [torch.Generator().manual_seed(row.seed) if row.temperature > 0 else None for row in settings]
    positions = positions or [prefill] * len(settings)
    return SamplingMetadata.of(list(settings), [prefill] * len(settings), positions, generators, max(DELAYS), "cpu")


def row(seed: int = 1, temperature: float = 1.0, top_k: int = 45, top_p: float = 1.0, cfg_scale: float = 1.0) -> RowSettings:
    return RowSettings(cfg_scale, temperature, top_p, top_k, 3072, seed)


def logits(requests: int, seed: int = 0) -> torch.Tensor:
    """(2, requests, C, V): conditioned and unconditioned scores, the special ids below every code."""
    made = torch.randn(2, requests, CHANNELS, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    made[..., EOS:] = -20.0
    return made


def drawn(scores: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    return SAMPLER(scores, metadata, torch.full((scores.shape[1],), -1)).tokens


def test_temperature_zero_takes_each_codebooks_best_token():
    scores = logits(2)
    assert torch.equal(drawn(scores, rows(row(temperature=0.0), row(temperature=0.0))), scores[0].argmax(-1))


def test_each_row_draws_one_token_among_its_top_k_guided_ones():
    scores = logits(2)
    settings = [row(seed=seed, top_k=5, cfg_scale=3.0) for seed in (1, 2)]
    tokens = drawn(scores, rows(*settings))
    top5 = (scores[0] + (scores[0] - scores[1]) * 3.0).topk(5, dim=-1).indices
    assert all(token in allowed for token, allowed in zip(tokens.flatten().tolist(), top5.view(-1, 5).tolist()))


def test_top_p_keeps_only_the_nucleus():
    scores = torch.full((2, 1, CHANNELS, VOCAB), -10.0)
    scores[:, :, :, 3], scores[:, :, :, 4] = 10.0, 9.0  # token 3 holds about 73% of the mass, token 4 about 27%
    narrow = {drawn(scores, rows(row(seed=seed, top_p=0.5)))[0, 0].item() for seed in range(50)}
    wide = {drawn(scores, rows(row(seed=seed, top_p=1.0)))[0, 0].item() for seed in range(50)}
    assert narrow == {3} and wide == {3, 4}


def test_a_request_draws_the_same_tokens_whatever_it_is_batched_with():
    mine = logits(1, seed=5)
    alone = drawn(mine, rows(row(seed=42)))
    beside = torch.cat([logits(1, seed=1), mine, logits(1, seed=2)], dim=1)
    batched = drawn(beside, rows(row(seed=7), row(seed=42), row(seed=9, temperature=0.0)))
    assert torch.equal(batched[1], alone[0])


def test_low_temperature_concentrates_and_high_temperature_spreads_the_draws():
    scores = logits(1)
    best = scores[0, 0].argmax(dim=-1)

    def greedy_share(temperature: float) -> float:
        draws = torch.stack([drawn(scores, rows(row(seed=seed, temperature=temperature)))[0] for seed in range(50)])
        return (draws == best).float().mean().item()

    shares = [greedy_share(t) for t in (0.1, 0.5, 1.0, 2.0)]
    assert shares[0] > shares[1] > shares[2] > shares[3], shares


@pytest.mark.parametrize("temperature", [0.0, 1.8])
def test_a_request_left_no_token_fails_alone_and_the_others_draw_as_they_would_alone(temperature):
    scores = logits(3, seed=2)
    broken = scores.clone()
    broken[:, 1, 4] = -float("inf")  # request 1, codebook 4: nothing allowed
    broken[0, 1, 5, 7] = float("nan")
    settings = [row(seed=seed, temperature=temperature, top_p=0.95) for seed in (1, 2, 3)]
    out = SAMPLER(broken, rows(*settings), torch.full((3,), -1))
    assert out.broken.tolist() == [False, True, False]
    assert ((0 <= out.tokens) & (out.tokens < VOCAB)).all()  # a token anyway: nothing for the step to choke on
    for index in (0, 2):
        alone = drawn(scores[:, index : index + 1], rows(settings[index]))
        assert torch.equal(out.tokens[index], alone[0])


def test_the_end_marker_is_codebook_zeros_only_candidate_when_best_and_never_another_codebooks():
    scores = logits(2)
    scores[0, 0, :, EOS] = 100.0  # the best token of every codebook of request 0, and
    scores[0, 1, 0, EOS] = -100.0  # never of request 1's
    candidates, ends = SAMPLER.candidates(scores, rows(row(temperature=0.0), row(temperature=0.0)))
    assert ends.tolist() == [True, False]
    assert torch.isfinite(candidates[0, 0]).nonzero().flatten().tolist() == [EOS]
    assert not torch.isfinite(candidates[:, 1:, EOS:]).any() and not torch.isfinite(candidates[1, 0, EOS:]).any()


def test_codebook_zeros_end_marker_then_each_codebooks_delay_then_pad():
    scores = logits(1)
    scores[0, 0, 0, EOS] = 100.0
    settings = row(temperature=0.0)
    eos_at = torch.tensor([-1])
    frames = []
    for position in range(10, 10 + 20):  # it chose its end marker at position 10
        out = SAMPLER(scores, rows(settings, positions=[position]), eos_at)
        eos_at = out.eos_at
        frames.append(out.tokens[0])
    assert eos_at.tolist() == [10]
    for since, frame in enumerate(frames):
        for codebook, delay in enumerate(DELAYS):
            expected = EOS if since == delay else PAD if since > delay else None
            if expected is not None:
                assert frame[codebook] == expected, (since, codebook)
            else:
                assert frame[codebook] < EOS


def test_max_new_tokens_ends_codebook_zero_where_only_the_delay_tail_is_left():
    settings = RowSettings(1.0, 0.0, 1.0, 45, 40, 1)  # prefill 1: positions 1 .. 40 hold its frames
    out = SAMPLER(logits(1), rows(settings, positions=[1 + 40 - FRAMES_WITHOUT_AUDIO]), torch.tensor([-1]))
    assert out.eos_at.tolist() == [1 + 40 - FRAMES_WITHOUT_AUDIO] and out.tokens[0, 0] == EOS
    before = SAMPLER(logits(1), rows(settings, positions=[40 - FRAMES_WITHOUT_AUDIO]), torch.tensor([-1]))
    assert before.eos_at.tolist() == [-1] and before.tokens[0, 0] < EOS


# --- on the tiny Dia, through the runner ------------------------------------------------------------------


@pytest.fixture(scope="module")
def preparer(dia):
    return Preparer(dia.processor, dia.delay_pattern, dia.special_tokens, None)


def generate(dia, preparer, settings: list[RowSettings], text: str = "[S1] Hello there.") -> list:
    batch = DecodeBatch(dia.model, max_rows=len(settings))
    finished = batch.step([preparer.prepare(text, None, row, n) for n, row in enumerate(settings)])
    while batch.rows:
        finished += batch.step()
    return [done for done in sorted(finished, key=lambda done: done.tag)]


def test_every_cfg_filter_top_k_of_the_public_range_generates(dia, preparer):
    settings = [RowSettings(3.0, 1.8, 0.95, k, FRAMES_WITHOUT_AUDIO + 1, k) for k in range(1, 101)]
    for k, done in zip(range(1, 101), generate(dia, preparer, settings)):
        assert done.error is None and len(done.sequence) == 1 + FRAMES_WITHOUT_AUDIO + 1, k


def test_the_same_seed_and_temperature_repeat_and_another_temperature_does_not(dia, preparer):
    def frames(temperature: float):
        (done,) = generate(dia, preparer, [RowSettings(3.0, temperature, 0.95, 45, 40, 11)], "[S1] Once more.")
        return done.sequence

    assert torch.equal(frames(0.5), frames(0.5))
    assert not torch.equal(frames(0.5), frames(1.0))
