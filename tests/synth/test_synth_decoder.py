"""The continuous-batching decode loop on the tiny Dia: the same codes as transformers' own
`generate`, alone and beside other rows that join and leave; per-row settings; the position limit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from services.synth import audio, decoder
from services.synth.decoder import DecodeBatch, NoTokenLeft, RowSettings
from services.synth.engine import SynthesisInput
from services.synth.params import GenerationParams
from services.synth.prompts import Preparer, PromptCache
from tests.synth.helpers import noise_wav


def prompt(seconds: float) -> np.ndarray:
    return audio.read_prompt(noise_wav(seconds, seed=int(seconds * 10)), max_seconds=10)


# (text, prompt seconds or None, max_new_tokens, cfg_scale, cfg_filter_top_k): lengths and settings differ.
CASES = [
    ("[S1] Hello there.", None, 60, 3.0, 45),
    ("[S1] A much longer line than the first one. [S2] And a reply to it.", None, 80, 2.0, 10),
    ("[S1] Prompt words. [S1] New words.", 0.4, 50, 3.0, 45),
    ("[S1] Longer prompt words here. [S2] New words.", 1.3, 70, 1.0, 3),
]


@pytest.fixture(scope="module")
def preparer(engine):
    return Preparer(engine.processor, engine.model.config.delay_pattern, engine.special_tokens, PromptCache(1 << 20))


@pytest.fixture(scope="module")
def references(engine):
    """Each case's codes from transformers' generate (through the old engine), greedy, alone."""
    codes = []
    for text, seconds, frames, scale, top_k in CASES:
        params = GenerationParams(scale, 0.0, 0.95, top_k, frames, 1.0, None)
        item = SynthesisInput(text, prompt(seconds) if seconds else None, params, 1)
        codes.append(engine.generate([item])[0].codes)
    return codes


def settings(case, temperature: float = 0.0, seed: int = 1) -> RowSettings:
    _, _, frames, scale, top_k = case
    return RowSettings(scale, temperature, 0.95, top_k, frames, seed)


def run(engine, preparer, arrivals: dict[int, list[int]], temperature=0.0, seeds=None, compiled=False):
    """Step a batch until it is empty; arrivals maps a step to the cases that join at it."""
    batch = DecodeBatch(engine.model, max_rows=8, compiled=compiled)
    finished, step = {}, 0
    while step <= max(arrivals) or batch.rows:
        joining = []
        for index in arrivals.get(step, []):
            text, seconds, *_ = CASES[index]
            seed = seeds[index] if seeds else 1
            joining.append(
                preparer.prepare(text, prompt(seconds) if seconds else None, settings(CASES[index], temperature, seed), index)
            )
        for done in batch.step(joining):
            finished[done.tag] = engine._decode_row(done.sequence[None], done.prefill_frames)
        step += 1
    return finished, batch


def start_cases(batch, preparer, indices, steps: int) -> dict:
    """The cases join `batch` together (tagged by index) and run `steps` more steps; returns any that finished."""
    joining = []
    for index in indices:
        text, seconds, *_ = CASES[index]
        joining.append(preparer.prepare(text, prompt(seconds) if seconds else None, settings(CASES[index]), index))
    finished = {done.tag: done for done in batch.step(joining)}
    for _ in range(steps):
        finished.update((done.tag, done) for done in batch.step())
    return finished


def test_alone_each_request_gets_the_codes_transformers_generate_gives(engine, preparer, references):
    for index in range(len(CASES)):
        finished, _ = run(engine, preparer, {0: [index]})
        assert torch.equal(finished[index].codes, references[index]), CASES[index]


def test_rows_joining_and_leaving_at_other_steps_do_not_change_a_rows_codes(engine, preparer, references):
    # All at once, then staggered: rows join mid-way (a longer prompt widens the cache) and
    # leave at different steps with different settings.
    for arrivals in ({0: [0, 1, 2, 3]}, {0: [1], 5: [3], 9: [0], 30: [2]}, {0: [2], 1: [0], 40: [1, 3]}):
        finished, batch = run(engine, preparer, arrivals)
        assert sorted(finished) == [0, 1, 2, 3]
        for index, generated in finished.items():
            assert torch.equal(generated.codes, references[index]), (arrivals, CASES[index])
        assert batch.rows == [] and batch.width == 0  # everything left: nothing held


def test_a_row_leaves_the_step_its_last_codebook_ends(engine, preparer):
    batch = DecodeBatch(engine.model, max_rows=2)
    short = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 20, 1), "short")
    long = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 40, 1), "long")
    ended_at = {}
    for step in range(40):
        for done in batch.step([short, long] if step == 0 else []):
            ended_at[done.tag] = step
            assert len(done.sequence) == 1 + (20 if done.tag == "short" else 40)
    assert ended_at == {"short": 19, "long": 39}
    assert batch.rows == []


def test_sampled_rows_repeat_with_their_seed_and_differ_with_another(engine, preparer):
    first, _ = run(engine, preparer, {0: [0, 1]}, temperature=1.0, seeds={0: 5, 1: 6})
    again, _ = run(engine, preparer, {0: [0, 1]}, temperature=1.0, seeds={0: 5, 1: 6})
    other, _ = run(engine, preparer, {0: [0, 1]}, temperature=1.0, seeds={0: 9, 1: 6})
    assert torch.equal(first[0].codes, again[0].codes) and torch.equal(first[1].codes, again[1].codes)
    assert not torch.equal(first[0].codes, other[0].codes)


def test_a_guidance_filter_of_one_token_leaves_every_codebook_a_token(engine, preparer):
    batch = DecodeBatch(engine.model, max_rows=2)
    rows = [preparer.prepare("[S1] Hi.", None, RowSettings(3.0, t, 0.95, 1, 40, 3), t) for t in (0.0, 1.8)]
    finished = []
    for step in range(40):
        finished += batch.step(rows if step == 0 else [])
    assert sorted(done.tag for done in finished) == [0.0, 1.8]
    for done in finished:
        assert ((done.sequence >= 0) & (done.sequence <= 1026)).all()


def test_a_prompt_and_length_beyond_the_models_positions_are_refused(engine, preparer):
    batch = DecodeBatch(engine.model, max_rows=2)
    limit = engine.model.config.decoder_config.max_position_embeddings
    prompt_frames = preparer.prepare("[S1] Hi.", prompt(1.0), RowSettings(3.0, 0.0, 0.95, 45, 10, 1)).prefill_frames - 1
    assert batch.room_for(prompt_frames + 1) == limit - prompt_frames
    fits = RowSettings(3.0, 0.0, 0.95, 45, limit - prompt_frames, 1)
    batch.check_fits(preparer.prepare("[S1] Hi.", prompt(1.0), fits))
    too_long = preparer.prepare("[S1] Hi.", prompt(1.0), RowSettings(3.0, 0.0, 0.95, 45, limit - prompt_frames + 1, 1))
    with pytest.raises(ValueError, match="at most"):
        batch.check_fits(too_long)
    # In a running batch it fails alone, with that reason, and the other row goes on.
    other = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 20, 1), "other")
    too_long.tag = "too long"
    (refused,) = batch.step([other, too_long])
    assert refused.tag == "too long" and "at most" in str(refused.error)
    assert [row.prepared.tag for row in batch.rows] == ["other"]


def test_a_row_generates_up_to_the_last_position(engine, preparer):
    batch = DecodeBatch(engine.model, max_rows=1)
    limit = batch.max_positions = 80  # as if the model had 80 positions, to keep the test short
    row = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, limit, 1), "whole")
    finished = []
    while not finished:
        finished = batch.step([row] if not batch.rows and row else [])
        row = None
    assert len(finished[0].sequence) == 1 + limit


def first_codes(engine, preparer, temperature: float, top_p: float = 1.0, rows: int = 32) -> list[int]:
    """The first code of codebook 0 for `rows` seeds, all in one batch: the same distribution in every row."""
    batch = DecodeBatch(engine.model, max_rows=rows)
    joining = [
        preparer.prepare("[S1] Hello there, how are you?", None, RowSettings(3.0, temperature, top_p, 45, 17, seed), seed)
        for seed in range(rows)
    ]
    batch.step(joining)
    return [int(batch.outputs[row.slot, 1, 0]) for row in batch.rows]


def test_temperatures_below_one_are_honoured_and_top_p_narrows_the_draws(engine, preparer):
    greedy = first_codes(engine, preparer, 0.0, rows=1)[0]
    by_temperature = {t: first_codes(engine, preparer, t) for t in (0.1, 0.5, 1.0, 2.0)}
    shares = [codes.count(greedy) for codes in by_temperature.values()]
    distinct = [len(set(codes)) for codes in by_temperature.values()]
    # Clamped to 1.0, as transformers' Dia does, 0.1 and 0.5 would draw what 1.0 draws.
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[2], by_temperature
    assert distinct == sorted(distinct) and distinct[0] < distinct[2], by_temperature
    assert len(set(first_codes(engine, preparer, 2.0, top_p=0.1))) < distinct[3]


def test_a_row_removed_mid_way_frees_its_slot_and_the_others_go_on_unchanged(engine, preparer, references):
    batch = DecodeBatch(engine.model, max_rows=3)
    finished = start_cases(batch, preparer, (0, 1, 2), steps=10)
    batch.remove({1})  # its caller went away
    assert sorted(row.prepared.tag for row in batch.rows) == [0, 2]
    late = preparer.prepare(CASES[3][0], prompt(CASES[3][1]), settings(CASES[3]), 3)  # takes the freed slot
    for done in batch.step([late]):
        finished[done.tag] = done
    while batch.rows:
        for done in batch.step():
            finished[done.tag] = done
    assert sorted(finished) == [0, 2, 3]
    for index, done in finished.items():
        codes = engine._decode_row(done.sequence[None], done.prefill_frames).codes
        assert torch.equal(codes, references[index]), CASES[index]


def test_a_row_whose_scores_leave_no_token_fails_alone(engine, preparer, references):
    batch = DecodeBatch(engine.model, max_rows=2)
    choose = batch._choose

    def poisoned(logits):  # the second row's model output turns to NaN at its 10th step
        if len(batch.rows) == 2 and batch.rows[1].position == 10:
            logits[:, 1] = float("nan")
        return choose(logits)

    batch._choose = poisoned
    good = preparer.prepare(CASES[0][0], None, settings(CASES[0]), "good")
    bad = preparer.prepare(CASES[1][0], None, settings(CASES[1], temperature=1.0), "bad")
    finished = {}
    for done in batch.step([good, bad]):
        finished[done.tag] = done
    while batch.rows:
        for done in batch.step():
            finished[done.tag] = done
    assert isinstance(finished["bad"].error, NoTokenLeft)
    codes = engine._decode_row(finished["good"].sequence[None], finished["good"].prefill_frames).codes
    assert torch.equal(codes, references[0])


def test_the_cache_growing_while_rows_run_changes_no_rows_codes(engine, preparer, references, monkeypatch):
    # Small buckets: the self-attention columns grow every 16 frames and the text columns whenever a
    # longer text joins, each time while other rows are mid-way.
    monkeypatch.setattr(decoder, "COLUMN_ALLOCATION", 16)
    monkeypatch.setattr(decoder, "COLUMN_BUCKET", 8)
    monkeypatch.setattr(decoder, "TEXT_BUCKET", 4)
    finished, _ = run(engine, preparer, {0: [0], 3: [2], 20: [1], 21: [3]})
    for index, generated in finished.items():
        assert torch.equal(generated.codes, references[index]), CASES[index]


def test_a_step_attends_over_the_longest_rows_columns_in_buckets_and_memory_follows_it(engine, preparer):
    batch = DecodeBatch(engine.model, max_rows=2)
    long = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 300, 1), "long")
    short = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 20, 1), "short")
    assert batch.width == 0 and batch.cache.columns == 0
    width, columns = {}, {}  # by the frame the long row's next step feeds (it writes that column)
    for step in range(300):
        batch.step([long] if step == 0 else [short] if step == 100 else [])
        if batch.rows:
            width[batch.rows[0].position] = batch.width
            columns[batch.rows[0].position] = batch.cache.columns
    assert batch.rows == []
    assert [width[p] for p in (1, 63, 64, 127, 128, 255, 256, 299)] == [64, 64, 128, 128, 192, 256, 320, 320]
    # Allocated 256 at a time, by the step that writes the first column past them (column 256: the
    # step after which the row feeds 257).
    assert [columns[p] for p in (1, 256, 257, 299)] == [256, 256, 512, 512]
    assert batch.cache.columns == 0 and batch.cache.self_keys[0].numel() == 0  # all left: nothing held


def test_the_columns_allocated_stop_at_the_models_positions(engine, preparer):
    batch = DecodeBatch(engine.model, max_rows=1)
    batch.max_positions = 80  # as if the model had 80 positions
    batch.step([preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 80, 1), "whole")])
    while batch.rows:
        assert batch.cache.columns == 80 and batch.width <= 80  # its last frame fed sits in column 79
        batch.step()


def test_when_a_middle_row_leaves_the_last_row_takes_its_slots_and_keeps_its_codes(engine, preparer, references):
    batch = DecodeBatch(engine.model, max_rows=3)
    finished = start_cases(batch, preparer, (0, 1, 3), steps=10)
    last = batch.rows[2]
    keys = [layer[4:6, :, : last.cached].clone() for layer in batch.cache.self_keys]
    text_mask = batch.cache.text_mask[4:6].clone()
    batch.remove({1})
    assert batch.rows == [rows_of(batch, 0), last]  # the last row moved into the middle row's place
    for layer, before in zip(batch.cache.self_keys, keys):
        assert torch.equal(layer[2:4, :, : last.cached], before)  # with its cache
    assert torch.equal(batch.cache.text_mask[2:4], text_mask)
    while batch.rows:
        for done in batch.step():
            finished[done.tag] = done
    assert sorted(finished) == [0, 3]
    for index, done in finished.items():
        codes = engine._decode_row(done.sequence[None], done.prefill_frames).codes
        assert torch.equal(codes, references[index]), CASES[index]


def rows_of(batch: DecodeBatch, tag):
    (row,) = [row for row in batch.rows if row.prepared.tag == tag]
    return row


def test_compiled_steps_give_the_codes_transformers_generate_gives(engine, preparer, references):
    # SYNTH_COMPILE: decoder_step through torch.compile (inductor's C++ on the CPU), rows padded to
    # powers of two; rows join and leave, so it runs at several row counts and column buckets.
    finished, batch = run(engine, preparer, {0: [1], 5: [3], 9: [0], 30: [2]}, compiled=True)
    assert batch.compiled and not torch._dynamo.utils.counters["graph_break"]  # one graph: nothing ran eagerly
    for index, generated in finished.items():
        assert torch.equal(generated.codes, references[index]), CASES[index]


def test_synth_compile_turns_compiled_steps_on(engine, monkeypatch):
    assert not DecodeBatch(engine.model, max_rows=1).compiled  # off by default
    monkeypatch.setenv("SYNTH_COMPILE", "true")
    assert DecodeBatch(engine.model, max_rows=1).compiled
    monkeypatch.setenv("SYNTH_COMPILE", "sometimes")
    with pytest.raises(SystemExit, match="SYNTH_COMPILE"):
        DecodeBatch(engine.model, max_rows=1)


def test_the_step_function_computes_what_transformers_decoder_does_with_dias_own_head_layout():
    # The tiny model has 2 query heads over 1 key/value head; the real Dia 16 over 4 (cross-attention
    # 16 over 16). A random model with that layout: one frame through decoder_step, its row in the
    # middle slots beside an unused one, against the model's own forward with its own cache.
    from transformers import DiaConfig, DiaDecoderConfig, DiaEncoderConfig, DiaForConditionalGeneration

    torch.manual_seed(0)
    encoder = DiaEncoderConfig(
        num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, head_dim=16
    )
    layout = DiaDecoderConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=16, num_key_value_heads=4,
        head_dim=32, cross_num_attention_heads=16, cross_num_key_value_heads=16, cross_head_dim=32, cross_hidden_size=64,
    )  # fmt: skip
    model = DiaForConditionalGeneration(DiaConfig(encoder_config=encoder, decoder_config=layout)).eval()
    with torch.no_grad():
        text = torch.randint(0, 255, (2, 23))
        encoded = model.model.encoder(input_ids=text, attention_mask=torch.ones_like(text)).last_hidden_state
        prefill = model(encoder_outputs=(encoded,), decoder_input_ids=torch.randint(0, 1024, (2, 37, 9)), use_cache=True)
        cache = decoder.SlotCache(model, max_rows=3)
        cache.put(1, copy.deepcopy(prefill.past_key_values), most_columns=3072)
        cache.reserve_columns(38, rows=2, most=3072)
        frame = torch.randint(0, 1024, (2, 1, 9))
        expected = model(encoder_outputs=(encoded,), decoder_input_ids=frame, past_key_values=prefill.past_key_values)
        frames = torch.cat([torch.full((2, 9), 1025), frame[:, 0]])
        logits = decoder.decoder_step(model, frames, torch.tensor([0, 0, 37, 37]), *cache.buffers(), 64)[2:]
    torch.testing.assert_close(logits, expected.logits[:, -1].view(2, 9, -1), rtol=1e-5, atol=1e-5)


# --- on a CUDA GPU (skipped without one; run them where a GPU is lent) ---------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_engine(tiny_model_dir):
    """The tiny model on the GPU in float32, so that codes can be compared with generate's there."""
    from services.synth.engine import DiaEngine

    return DiaEngine.load(str(tiny_model_dir / "dia"), str(tiny_model_dir / "dac"), "tiny", "cuda", 1, "float32")


@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "cuda-graphs"])
def test_on_a_gpu_the_loop_and_its_cuda_graphs_give_the_codes_generate_gives_there(cuda_engine, compiled):
    preparer = Preparer(cuda_engine.processor, cuda_engine.model.config.delay_pattern, cuda_engine.special_tokens, None)
    expected = []
    for text, seconds, frames, scale, top_k in CASES:
        params = GenerationParams(scale, 0.0, 0.95, top_k, frames, 1.0, None)
        expected.append(cuda_engine.generate([SynthesisInput(text, prompt(seconds) if seconds else None, params, 1)])[0].codes)
    finished, batch = run(cuda_engine, preparer, {0: [1], 5: [3], 9: [0], 30: [2]}, compiled=compiled)
    assert batch.cache.static == compiled  # CUDA graphs need buffers that stay where they were recorded
    for index, generated in finished.items():
        assert torch.equal(generated.codes, expected[index]), CASES[index]
