"""The engine's frames against transformers' own `DiaForConditionalGeneration.generate`, unmodified.

Greedy decoding, where the two must agree: a request's delayed frames (every
codebook, its end marker and delay tail included) are those stock generate
gives it, alone and while other requests join and leave beside it. On the
tiny model as built (its end marker never wins: rows end at max_new_tokens)
and on a copy whose end marker wins now and then, so that rows end at their
own end marker, each at another step, and Dia's end rules run.

Then where the two differ on purpose: with a cfg_filter_top_k of 1 or 2,
stock generate takes its k best guided tokens and the end rules remove the
ones no codebook may emit after, which can leave a codebook fewer than k
candidates, or none; ours takes its k among the tokens the end rules allow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.generation.logits_process import (
    DiaClassifierFreeGuidanceLogitsProcessor,
    DiaEOSChannelFilterLogitsProcessor,
)

from services.synth.engine.prompts import Preparer, PromptCache
from services.synth.engine.sampler import Sampler, SamplingMetadata
from services.synth.engine.request import RowSettings
from tests.synth.cases import CASES, prepared, run, same_frames, stock_generate

EOS, PAD, VOCAB, CHANNELS = 1024, 1025, 1028, 9


@pytest.fixture(scope="module")
def preparer(dia):
    return Preparer(dia.processor, dia.delay_pattern, dia.special_tokens, PromptCache(1 << 20))


@pytest.fixture(scope="module")
def ending_model(dia):
    """A copy of the tiny Dia whose end marker wins on codebook 0 now and then, as a trained model's does.

    The tiny model's output row for the end marker is zero (so that its rows always run to
    max_new_tokens); here it is random, with twice the spread of the other rows.
    """
    model = copy.deepcopy(dia.model)
    with torch.no_grad():
        row = model.logits_dense.weight[EOS]
        row.copy_(torch.randn(row.shape, generator=torch.Generator().manual_seed(7)) * 1.0)
    return model


@pytest.fixture(scope="module", params=["tiny", "ending"])
def model(request, dia, ending_model):
    return dia.model if request.param == "tiny" else ending_model


# Greedy either way. With every token a candidate (k = the vocabulary) the end rules cannot cut stock's
# candidates, so the two must agree whatever the model. At the requests' own k (45, 10; 3 without
# guidance) the random tiny model does rank a pad or bos among a codebook's k best guided tokens at many
# steps, so stock keeps k - 1 candidates there and ours k; greedy takes the best conditioned one, which
# on these requests is one both keep (test_where_ours_differs_on_purpose shows a k where it is not).
TOP_K = {"own k": None, "every token": VOCAB}


@pytest.fixture(scope="module", params=list(TOP_K))
def top_k(request):
    return TOP_K[request.param]


def test_the_ending_model_ends_rows_at_their_own_end_marker(dia, ending_model):
    generated = [len(stock_generate(dia, ending_model, index)) - 1 for index in (0, 1)]  # bos aside (no prompt)
    assert generated[0] < CASES[0][2] and generated[1] < CASES[1][2], generated  # before max_new_tokens
    assert generated[0] != generated[1]


def test_alone_a_request_gets_the_frames_stock_generate_gives(dia, model, preparer, top_k):
    for index in range(len(CASES)):
        finished, _ = run(model, preparer, {0: [index]}, top_k=top_k)
        assert same_frames(finished[index], stock_generate(dia, model, index, top_k)), CASES[index]


@pytest.mark.parametrize("arrivals", [{0: [0, 1, 2, 3]}, {0: [1], 5: [3], 9: [0], 30: [2]}, {0: [2], 1: [0], 40: [1, 3]}])
def test_rows_joining_and_leaving_beside_a_request_do_not_change_its_frames(dia, model, preparer, top_k, arrivals):
    # All at once, then staggered: rows join mid-way (a longer prompt widens the cache) and leave at
    # different steps with different settings.
    finished, batch = run(model, preparer, arrivals, top_k=top_k)
    assert sorted(finished) == [0, 1, 2, 3]
    for index, done in finished.items():
        assert same_frames(done, stock_generate(dia, model, index, top_k)), (arrivals, CASES[index])
    assert batch.rows == [] and batch.width == 0  # everything left: nothing held


def stock_candidates(logits: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """transformers' processors as its generate chains them on (2, requests, C, V) logits: guidance with
    its top-k, then the end rules; (requests, C, V) scores, -inf where a token is no candidate."""
    requests = logits.shape[1]
    flat = torch.cat([logits[0].reshape(-1, VOCAB), logits[1].reshape(-1, VOCAB)])
    input_ids = torch.zeros(requests * CHANNELS, 1, dtype=torch.long)
    guided = DiaClassifierFreeGuidanceLogitsProcessor(scale, k)(input_ids, flat.clone())
    return DiaEOSChannelFilterLogitsProcessor(CHANNELS, EOS)(input_ids, guided).view(requests, CHANNELS, VOCAB)


def our_candidates(logits: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    sampler = Sampler(CHANNELS, VOCAB, EOS, PAD, [0, 8, 9, 10, 11, 12, 13, 14, 15], "cpu")
    rows = [RowSettings(scale, 1.0, 1.0, k, 100, 0)] * logits.shape[1]
    positions = [1] * logits.shape[1]
    return sampler.candidates(logits, SamplingMetadata.of(rows, positions, positions, [None] * len(rows), 15, "cpu"))[0]


@pytest.mark.parametrize("end_marker", ["best", "second", "out of the k"])
def test_the_candidates_a_row_draws_from_are_those_stock_guidance_and_end_rules_leave(end_marker):
    """Sampling draws among the candidates, so they must be stock's too, not only the best of them:
    where the end rules cut none of the k best guided tokens, the same tokens with the same
    (conditioned) logits — the end marker codebook 0's only candidate when it is its best token, and
    no candidate when it is not."""
    cond = torch.randn(3, CHANNELS, VOCAB, generator=torch.Generator().manual_seed(3)) * 3
    uncond = torch.randn(3, CHANNELS, VOCAB, generator=torch.Generator().manual_seed(4))
    cond[..., EOS:] = uncond[..., EOS:] = -20.0  # far below any of the k best
    guided = cond + (cond - uncond) * 3.0
    best, second = guided[:, 0, :EOS].topk(2).values.unbind(-1)
    highest = cond[:, 0, :EOS].max(-1).values
    # Where the end marker ranks by its guided logit (which picks the k) and by its conditioned one
    # (which the end rules and the draw read): among the k, above every conditioned logit, or not.
    aimed_guided, aimed_cond = {
        "best": (best + 1, highest + 1),
        "second": ((best + second) / 2, highest - 10),
        "out of the k": (best - 100, highest + 1),
    }[end_marker]
    cond[:, 0, EOS] = aimed_cond
    uncond[:, 0, EOS] = (4 * aimed_cond - aimed_guided) / 3  # guided = 4 * cond - 3 * uncond
    logits = torch.stack([cond, uncond])
    ours, stock = our_candidates(logits, 3.0, 45), stock_candidates(logits, 3.0, 45)
    assert torch.equal(ours, stock)
    on_codebook_zero = torch.isfinite(ours[:, 0])
    assert on_codebook_zero[:, EOS].tolist() == [end_marker == "best"] * 3
    assert on_codebook_zero.sum(-1).tolist() == [{"best": 1, "second": 44, "out of the k": 45}[end_marker]] * 3


# --- where ours differs on purpose ----------------------------------------------------------------------


def ruled_out_on_top(requests: int) -> torch.Tensor:
    """(2, requests, C, V) logits whose best guided tokens are ids the end rules rule out: pad and bos
    on every codebook, the end marker too on all but the first."""
    cond = torch.randn(requests, CHANNELS, VOCAB, generator=torch.Generator().manual_seed(1))
    cond[..., EOS + 1 :] = 50.0
    cond[:, 1:, EOS] = 50.0
    return torch.stack([cond, torch.zeros_like(cond)])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_stock_guidance_can_leave_a_codebook_no_token_and_ours_keeps_k_it_may_emit(k):
    logits = ruled_out_on_top(2)
    stock = stock_candidates(logits, 3.0, k)
    assert (torch.isfinite(stock).sum(-1) == 0).any()  # codebooks left with nothing to emit
    ours = our_candidates(logits, 3.0, k)
    allowed = logits[0] + (logits[0] - logits[1]) * 3.0
    allowed[:, 1:, EOS:] = allowed[:, 0, EOS + 1 :] = -float("inf")
    for request in range(2):
        for codebook in range(CHANNELS):
            kept = torch.isfinite(ours[request, codebook]).nonzero().flatten()
            # Its k best guided tokens among those the end rules allow, with their conditioned logits.
            assert set(kept.tolist()) == set(allowed[request, codebook].topk(k).indices.tolist())
            assert torch.equal(ours[request, codebook, kept], logits[0, request, codebook, kept])


@pytest.mark.parametrize("k", [1, 2])
def test_where_ours_differs_on_purpose(dia, preparer, k):
    """Greedy, with guidance, a cfg_filter_top_k of 1 or 2: the frames are stock generate's up to the
    first step where its end rules removed one of its k candidates from a codebook whose token is not
    fixed by the prompt or the delay pattern; they part at such a step, and only there: ours had
    its k allowed candidates, stock fewer (at k = 1 none: it emits token 0, a code the model never
    chose; its sampling would fail there)."""
    index = 0
    stock = stock_generate(dia, dia.model, index, k, output_scores=True)
    finished, _ = run(dia.model, preparer, {0: [index]}, top_k=k)
    ours, theirs = finished[index].sequence, stock.sequences[0].cpu()
    row = prepared(preparer, index, top_k=k)
    start = row.prefill_frames  # stock's scores[i] chose the frame at start + i
    candidates = torch.stack([torch.isfinite(scores).sum(-1) for scores in stock.scores])  # (steps, C)
    fixed = torch.zeros_like(candidates, dtype=torch.bool)
    fixed[: len(row.delayed) - start] = row.delayed[start:] != PAD
    cut = (candidates < k) & ~fixed
    steps = cut.any(dim=1).nonzero().flatten()
    first_cut = int(steps[0])
    parted = (ours[: len(theirs)] != theirs[: len(ours)]).any(dim=1).nonzero().flatten()
    assert len(parted), "they never parted"
    first_parted = int(parted[0]) - start
    assert torch.equal(ours[: start + first_cut], theirs[: start + first_cut])
    codebooks = (ours[start + first_parted] != theirs[start + first_parted]).nonzero().flatten()
    assert cut[first_parted, codebooks].all()  # where they part, stock had fewer than k candidates
    assert (ours[start + first_parted, codebooks] < EOS).all()  # ours a code the end rules allow
    if k == 1:
        assert first_parted == first_cut
        assert (candidates[first_cut, codebooks] == 0).all() and (theirs[start + first_cut, codebooks] == 0).all()
