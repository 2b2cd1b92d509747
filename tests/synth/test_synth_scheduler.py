"""The scheduler alone: policy without a model (it imports no torch). Who joins the next step and in
which lane, account turns, the frame budget, the bounded queue and its Retry-After, callers that
leave, retries after a failed step. (The same through the engine on the tiny Dia: test_synth_engine.py.)"""

from __future__ import annotations

import collections

import grpc
import pytest

from runtime.errors import ApiError
from services.synth.engine.request import SHARED_LANE, SynthesisInput
from services.synth.engine.scheduler import STEP_FAILED, Job, Scheduler
from services.synth.params import GenerationParams

DONE = object()  # a stand-in for a request's result


def job(name: str, account: str = "", frames: int = 100, seed: int | None = None, prompt_frames: int = 0) -> Job:
    params = GenerationParams(3.0, 1.8, 0.95, 45, frames, 1.0, seed)
    made = Job(SynthesisInput("[S1] hi", None, params, seed or 7), account, prompt_frames)
    made.name = name
    return made


def names(jobs) -> list[str]:
    return [j.name for j in jobs]


def scheduler(max_rows: int = 4, max_queue: int = 100, max_frames: int = 10**9, retries: int = 1) -> Scheduler:
    return Scheduler(max_rows, 0.0, max_queue, max_frames, retries)


def finish(scheduler: Scheduler, jobs) -> None:
    """They ended at the last step, and their results went out."""
    for ended, _ in scheduler.update_from_output([(j, DONE) for j in jobs]):
        scheduler.done(ended)


def joining(scheduler: Scheduler) -> list[Job]:
    return scheduler.schedule().joining


# --- who joins, in which order -----------------------------------------------------------------------------


def test_requests_join_in_order_up_to_the_rows_and_the_next_join_as_places_free():
    s = scheduler(max_rows=3)
    for n in range(5):
        s.add(job(f"a{n}"))
    first = joining(s)
    assert names(first) == ["a0", "a1", "a2"] and names(s.waiting) == ["a3", "a4"]
    assert joining(s) == []  # no place free
    finish(s, first[1:2])
    assert names(joining(s)) == ["a3"]


def test_one_accounts_backlog_does_not_hold_up_anothers_first_request():
    s = scheduler(max_rows=4)
    for n in range(12):
        s.add(job(f"a{n}", account="a"))
    first = joining(s)
    assert names(first) == ["a0", "a1", "a2", "a3"]
    s.add(job("b0", account="b"))  # arrives while a's first requests run
    finish(s, first)
    # The very next places: b has not been served yet, so it goes first.
    second = joining(s)
    assert names(second) == ["b0", "a4", "a5", "a6"]
    finish(s, second)
    assert names(joining(s)) == ["a7", "a8", "a9", "a10"]


def test_places_are_filled_one_account_at_a_time():
    s = scheduler(max_rows=4)
    for name in ("a0", "a1", "a2", "b0", "c0", "b1"):
        s.add(job(name, account=name[0]))
    first = joining(s)
    assert names(first) == ["a0", "b0", "c0", "a1"]
    finish(s, first)
    # a and b were both served last time: the one waiting longest goes first.
    assert names(joining(s)) == ["a2", "b1"]


def test_accounts_that_keep_sending_share_the_places_equally():
    s = scheduler(max_rows=3)
    taken = collections.Counter()
    for round_ in range(20):
        for account in "abc":  # each always has two waiting, a far more
            while sum(j.account == account for j in s.waiting) < (10 if account == "a" else 2):
                s.add(job(f"{account}{round_}", account=account))
        joined = joining(s)
        taken.update(j.account for j in joined)
        finish(s, joined)
    assert taken == {"a": 20, "b": 20, "c": 20}


def test_past_the_frame_budget_the_next_turn_waits_for_room_and_nobody_overtakes_it():
    # Each reserves bos + its frames: 101 + 201 > 250, while 101 + 21 would fit.
    s = scheduler(max_frames=250)
    running = job("a0", account="a", frames=100)
    s.add(running)
    assert names(joining(s)) == ["a0"]
    s.add(job("b0", account="b", frames=200))
    s.add(job("c0", account="c", frames=20))
    assert joining(s) == []  # b0 does not fit beside a0, and c0 does not go before it
    finish(s, [running])
    assert names(joining(s)) == ["b0", "c0"]  # b0 alone always fits; 201 + 21 within the budget


def test_a_voice_prompts_frames_count_in_the_budget():
    s = scheduler(max_frames=250)
    s.add(job("a0", frames=100))
    joining(s)
    s.add(job("b0", frames=100, prompt_frames=49))  # 101 + 150 > 250
    assert joining(s) == []
    t = scheduler(max_frames=250)
    t.add(job("a0", frames=100))
    joining(t)
    t.add(job("b0", frames=100, prompt_frames=48))  # 101 + 149 = 250
    assert names(joining(t)) == ["b0"]


def test_a_seeded_request_gets_a_lane_of_its_own_and_the_others_share_one():
    s = scheduler(max_rows=8)
    for name, seed in (("a", None), ("b", 5), ("c", None), ("d", 6)):
        s.add(job(name, seed=seed))
    lanes = {j.name: j.lane for j in joining(s)}
    assert lanes["a"] == lanes["c"] == SHARED_LANE
    assert len({lanes["b"], lanes["d"], SHARED_LANE}) == 3


# --- the bounded queue ------------------------------------------------------------------------------------


def test_past_the_queue_limit_requests_are_refused_at_once_and_a_caller_leaving_frees_its_place():
    s = scheduler(max_rows=1, max_queue=1)
    s.add(job("running"))
    joining(s)
    waiting = job("waiting")
    s.add(waiting)
    with pytest.raises(ApiError) as caught:
        s.add(job("refused"))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SYNTH_BUSY")
    assert s.load == 2  # the refusal took no place
    s.cancel(waiting)
    assert s.load == 1 and not s.waiting
    s.add(job("replacement"))  # room again


def test_a_full_queue_says_when_to_try_again_from_how_fast_requests_finish():
    s = scheduler(max_rows=2, max_queue=0)
    for name in ("a", "b"):
        s.add(job(name))
    finish(s, joining(s))  # 2 finished: a rate to go by
    for name in ("c", "d"):
        s.add(job(name))
    joining(s)
    with pytest.raises(ApiError) as caught:
        s.add(job("e"))
    assert caught.value.reason == "SYNTH_BUSY"
    rate = s.throughput.per_second()
    assert caught.value.retry_after == pytest.approx(min(max(2 / rate, 1), 60), rel=0.05)


def test_before_anything_finished_a_full_queue_still_says_when_to_try_again():
    s = scheduler(max_rows=1, max_queue=0)
    s.add(job("a"))
    with pytest.raises(ApiError) as caught:
        s.add(job("b"))
    assert caught.value.retry_after == 1.0


def test_a_request_being_decoded_still_counts_as_load():
    s = scheduler(max_rows=1, max_queue=0)
    s.add(job("a"))
    (ended,) = joining(s)
    s.update_from_output([(ended, DONE)])
    s.finishing.add(ended)  # out of its lane, its audio being decoded
    with pytest.raises(ApiError):
        s.add(job("b"))
    s.done(ended)
    s.add(job("b"))


def test_a_caller_that_went_away_leaves_its_lane_at_the_next_step():
    s = scheduler()
    gone, staying = job("gone"), job("staying")
    s.add(gone)
    s.add(staying)
    joining(s)
    s.cancel(gone)
    plan = s.schedule()
    assert names(plan.leaving) == ["gone"] and names(s.running) == ["staying"]


# --- after a failed step ------------------------------------------------------------------------------------


def test_the_requests_of_a_failed_step_go_first_each_in_a_lane_of_its_own_and_fail_if_it_fails_again():
    s = scheduler(max_rows=4)
    for name in ("a", "b", "c"):
        s.add(job(name))
    first = joining(s)
    s.add(job("later"))
    assert s.update_from_output([(j, STEP_FAILED) for j in first[:2]]) == []  # both go back: nothing ends
    assert names(s.waiting) == ["a", "b", "later"]
    again = joining(s)
    assert names(again) == ["a", "b", "later"]
    lanes = [j.lane for j in again]
    assert SHARED_LANE not in lanes[:2] and lanes[0] != lanes[1] and lanes[2] == SHARED_LANE
    ((failed, error),) = s.update_from_output([(again[0], STEP_FAILED)])
    assert failed.name == "a" and error.reason == "GENERATION_FAILED" and "retried alone" in error.message


def test_without_retries_a_failed_step_fails_its_requests():
    s = scheduler(retries=0)
    s.add(job("a"))
    (a,) = joining(s)
    ((failed, error),) = s.update_from_output([(a, STEP_FAILED)])
    assert failed is a and error.reason == "GENERATION_FAILED" and "retried" not in error.message
