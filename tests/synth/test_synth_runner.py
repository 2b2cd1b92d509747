"""The runner's lanes on the tiny Dia: rows that join and leave, per-row settings, slots and the
key/value cache, the position limit, compiled steps. (Its frames against transformers' own generate:
test_synth_equivalence.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

from services.synth.engine import kv_cache, model_step, runner
from services.synth.engine.prompts import Preparer, PromptCache
from services.synth.engine.request import RowSettings
from services.synth.engine.runner import DecodeBatch, ModelRunner, NoTokenLeft
from tests.synth.cases import CASES, prepared, prompt, run, same_frames, settings, stock_generate


@pytest.fixture(scope="module")
def preparer(dia):
    return Preparer(dia.processor, dia.delay_pattern, dia.special_tokens, PromptCache(1 << 20))


@pytest.fixture(scope="module")
def references(dia):
    """Each case's delayed frames from transformers' own generate, greedy, alone."""
    return [stock_generate(dia, dia.model, index) for index in range(len(CASES))]


def start_cases(batch, preparer, indices, steps: int) -> dict:
    """The cases join `batch` together (tagged by index) and run `steps` more steps; returns any that finished."""
    finished = {done.tag: done for done in batch.step([prepared(preparer, index) for index in indices])}
    for _ in range(steps):
        finished.update((done.tag, done) for done in batch.step())
    return finished


def test_a_row_leaves_the_step_its_last_codebook_ends(dia, preparer):
    batch = DecodeBatch(dia.model, max_rows=2)
    short = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 20, 1), "short")
    long = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 40, 1), "long")
    ended_at = {}
    for step in range(40):
        for done in batch.step([short, long] if step == 0 else []):
            ended_at[done.tag] = step
            assert len(done.sequence) == 1 + (20 if done.tag == "short" else 40)
    assert ended_at == {"short": 19, "long": 39}
    assert batch.rows == []


def test_sampled_rows_repeat_with_their_seed_and_differ_with_another(dia, preparer):
    first, _ = run(dia.model, preparer, {0: [0, 1]}, temperature=1.0, seeds={0: 5, 1: 6})
    again, _ = run(dia.model, preparer, {0: [0, 1]}, temperature=1.0, seeds={0: 5, 1: 6})
    other, _ = run(dia.model, preparer, {0: [0, 1]}, temperature=1.0, seeds={0: 9, 1: 6})
    assert torch.equal(first[0].sequence, again[0].sequence) and torch.equal(first[1].sequence, again[1].sequence)
    assert not torch.equal(first[0].sequence, other[0].sequence)


def test_a_guidance_filter_of_one_token_leaves_every_codebook_a_token(dia, preparer):
    batch = DecodeBatch(dia.model, max_rows=2)
    rows = [preparer.prepare("[S1] Hi.", None, RowSettings(3.0, t, 0.95, 1, 40, 3), t) for t in (0.0, 1.8)]
    finished = []
    for step in range(40):
        finished += batch.step(rows if step == 0 else [])
    assert sorted(done.tag for done in finished) == [0.0, 1.8]
    for done in finished:
        assert ((done.sequence >= 0) & (done.sequence <= 1026)).all()


def test_a_prompt_and_length_beyond_the_models_positions_are_refused(dia, preparer):
    batch = DecodeBatch(dia.model, max_rows=2)
    limit = dia.model.config.decoder_config.max_position_embeddings
    prompt_frames = preparer.prepare("[S1] Hi.", prompt(1.0), RowSettings(3.0, 0.0, 0.95, 45, 10, 1)).prefill_frames - 1
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


def test_a_row_generates_up_to_the_last_position(dia, preparer):
    batch = DecodeBatch(dia.model, max_rows=1)
    limit = batch.max_positions = 80  # as if the model had 80 positions, to keep the test short
    row = preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, limit, 1), "whole")
    finished = []
    while not finished:
        finished = batch.step([row] if not batch.rows and row else [])
        row = None
    assert len(finished[0].sequence) == 1 + limit


def first_codes(dia, preparer, temperature: float, top_p: float = 1.0, rows: int = 32) -> list[int]:
    """The first code of codebook 0 for `rows` seeds, all in one batch: the same distribution in every row."""
    batch = DecodeBatch(dia.model, max_rows=rows)
    joining = [
        preparer.prepare("[S1] Hello there, how are you?", None, RowSettings(3.0, temperature, top_p, 45, 17, seed), seed)
        for seed in range(rows)
    ]
    batch.step(joining)
    return [int(batch.outputs[row.slot, 1, 0]) for row in batch.rows]


def test_temperatures_below_one_are_honoured_and_top_p_narrows_the_draws(dia, preparer):
    greedy = first_codes(dia, preparer, 0.0, rows=1)[0]
    by_temperature = {t: first_codes(dia, preparer, t) for t in (0.1, 0.5, 1.0, 2.0)}
    shares = [codes.count(greedy) for codes in by_temperature.values()]
    distinct = [len(set(codes)) for codes in by_temperature.values()]
    # Clamped to 1.0, as transformers' Dia does, 0.1 and 0.5 would draw what 1.0 draws.
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[2], by_temperature
    assert distinct == sorted(distinct) and distinct[0] < distinct[2], by_temperature
    assert len(set(first_codes(dia, preparer, 2.0, top_p=0.1))) < distinct[3]


def test_a_row_removed_mid_way_frees_its_slot_and_the_others_go_on_unchanged(dia, preparer, references):
    batch = DecodeBatch(dia.model, max_rows=3)
    finished = start_cases(batch, preparer, (0, 1, 2), steps=10)
    batch.remove({1})  # its caller went away
    assert sorted(row.prepared.tag for row in batch.rows) == [0, 2]
    late = prepared(preparer, 3)  # takes the freed slot
    for done in batch.step([late]):
        finished[done.tag] = done
    while batch.rows:
        for done in batch.step():
            finished[done.tag] = done
    assert sorted(finished) == [0, 2, 3]
    for index, done in finished.items():
        assert same_frames(done, references[index]), CASES[index]


def test_a_row_whose_scores_leave_no_token_fails_alone(dia, preparer, references):
    batch = DecodeBatch(dia.model, max_rows=2)
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
    assert same_frames(finished["good"], references[0])


def test_the_cache_growing_while_rows_run_changes_no_rows_frames(dia, preparer, references, monkeypatch):
    # Small buckets: the self-attention columns grow every 16 frames and the text columns whenever a
    # longer text joins, each time while other rows are mid-way.
    monkeypatch.setattr(kv_cache, "COLUMN_ALLOCATION", 16)
    monkeypatch.setattr(runner, "COLUMN_BUCKET", 8)
    monkeypatch.setattr(kv_cache, "TEXT_BUCKET", 4)
    finished, _ = run(dia.model, preparer, {0: [0], 3: [2], 20: [1], 21: [3]})
    for index, done in finished.items():
        assert same_frames(done, references[index]), CASES[index]


def test_a_step_attends_over_the_longest_rows_columns_in_buckets_and_memory_follows_it(dia, preparer):
    batch = DecodeBatch(dia.model, max_rows=2)
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


def test_the_columns_allocated_stop_at_the_models_positions(dia, preparer):
    batch = DecodeBatch(dia.model, max_rows=1)
    batch.max_positions = 80  # as if the model had 80 positions
    batch.step([preparer.prepare("[S1] Hi.", None, RowSettings(3.0, 0.0, 0.95, 45, 80, 1), "whole")])
    while batch.rows:
        assert batch.cache.columns == 80 and batch.width <= 80  # its last frame fed sits in column 79
        batch.step()


def test_when_a_middle_row_leaves_the_last_row_takes_its_slots_and_keeps_its_frames(dia, preparer, references):
    batch = DecodeBatch(dia.model, max_rows=3)
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
        assert same_frames(done, references[index]), CASES[index]


def test_a_lane_whose_step_raises_is_dropped_and_the_other_lanes_step_on(dia, preparer, references, monkeypatch):
    lanes = ModelRunner(dia.model, max_rows=4)
    step, calls = model_step.decoder_step, []

    def fails_in_its_own_lane(model, frames, *rest):  # a step of one row (two sequences) raises at its 5th call
        calls.append(frames.shape[0])
        if frames.shape[0] == 2 and calls.count(2) == 5:
            raise RuntimeError("injected fault")
        return step(model, frames, *rest)

    monkeypatch.setattr(model_step, "decoder_step", fails_in_its_own_lane)
    result = lanes.step({}, {0: [prepared(preparer, 0), prepared(preparer, 1)], 7: [prepared(preparer, 2)]})
    assert sorted(lanes.lanes) == [0, 7] and len(lanes.lanes[7].rows) == 1  # a lane not seen before: a batch of one
    finished, failed = {}, []
    while any(batch.rows for batch in lanes.lanes.values()):
        result = lanes.step({}, {})
        finished.update((done.tag, done) for done in result.finished)
        failed += result.failed
    ((error, tags),) = failed
    assert "injected" in str(error) and tags == [2]  # the lane, its row
    assert sorted(lanes.lanes) == [0]  # dropped; the shared lane stays
    for index in (0, 1):  # the shared lane went on, unchanged
        assert same_frames(finished[index], references[index]), CASES[index]


def rows_of(batch: DecodeBatch, tag):
    (row,) = [row for row in batch.rows if row.prepared.tag == tag]
    return row


def test_compiled_steps_give_the_frames_transformers_generate_gives(dia, preparer, references):
    # SYNTH_COMPILE: decoder_step through torch.compile (inductor's C++ on the CPU), rows padded to
    # powers of two; rows join and leave, so it runs at several row counts and column buckets.
    finished, batch = run(dia.model, preparer, {0: [1], 5: [3], 9: [0], 30: [2]}, compiled=True)
    assert batch.compiled and not torch._dynamo.utils.counters["graph_break"]  # one graph: nothing ran eagerly
    for index, done in finished.items():
        assert same_frames(done, references[index]), CASES[index]


def test_synth_compile_turns_compiled_steps_on(dia, monkeypatch):
    assert not DecodeBatch(dia.model, max_rows=1).compiled  # off by default
    monkeypatch.setenv("SYNTH_COMPILE", "true")
    assert DecodeBatch(dia.model, max_rows=1).compiled
    monkeypatch.setenv("SYNTH_COMPILE", "sometimes")
    with pytest.raises(SystemExit, match="SYNTH_COMPILE"):
        DecodeBatch(dia.model, max_rows=1)


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
        cache = kv_cache.SlotCache(model, max_rows=3)
        cache.put(1, copy.deepcopy(prefill.past_key_values), most_columns=3072)
        cache.reserve_columns(38, rows=2, most=3072)
        frame = torch.randint(0, 1024, (2, 1, 9))
        expected = model(encoder_outputs=(encoded,), decoder_input_ids=frame, past_key_values=prefill.past_key_values)
        frames = torch.cat([torch.full((2, 9), 1025), frame[:, 0]])
        logits = model_step.decoder_step(model, frames, torch.tensor([0, 0, 37, 37]), *cache.buffers(), 64)[2:]
    torch.testing.assert_close(logits, expected.logits[:, -1].view(2, 9, -1), rtol=1e-5, atol=1e-5)


# --- on a CUDA GPU (skipped without one; run them where a GPU is lent) ---------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_dia(tiny_model_dir):
    """The tiny model on the GPU in float32, so that frames can be compared with generate's there."""
    from services.synth.engine import model

    return model.load(str(tiny_model_dir / "dia"), str(tiny_model_dir / "dac"), "tiny", "cuda", 1, "float32")


@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "cuda-graphs"])
def test_on_a_gpu_the_runner_and_its_cuda_graphs_give_the_frames_generate_gives_there(cuda_dia, compiled):
    preparer = Preparer(cuda_dia.processor, cuda_dia.delay_pattern, cuda_dia.special_tokens, None)
    expected = [stock_generate(cuda_dia, cuda_dia.model, index) for index in range(len(CASES))]
    finished, batch = run(cuda_dia.model, preparer, {0: [1], 5: [3], 9: [0], 30: [2]}, compiled=compiled)
    assert batch.cache.static == compiled  # CUDA graphs need buffers that stay where they were recorded
    for index, done in finished.items():
        assert same_frames(done, expected[index]), CASES[index]
