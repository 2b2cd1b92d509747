"""runtime.inprocess: a servicer called in its own process meets the rules it meets over the network."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from runtime import inprocess, server
from runtime.errors import ApiError, invalid_parameter
from voice.gateway.v1 import generations_pb2

PATH = "/voice.gateway.v1.GenerationService/GetGeneration"


def handled(code: str) -> float:
    """How many GetGeneration calls the per-RPC metrics counted with this code so far."""
    return server.RPC_HANDLED.labels("voice.gateway.v1.GenerationService", "GetGeneration", code)._value.get()


async def test_the_handler_sees_the_callers_metadata_and_account_and_its_answers_metadata_comes_back():
    async def handler(request, context):
        assert dict(context.invocation_metadata()) == {"prefer": "wait"}
        assert context.caller == 7 and 0 < context.time_remaining() <= 5
        await context.send_initial_metadata((("x-generation-id", request.id),))
        context.set_trailing_metadata((("x-extra", "1"),))
        return generations_pb2.GetGenerationResponse(generation=generations_pb2.Generation(id=request.id))

    context = inprocess.InProcessContext((("prefer", "wait"),), timeout=5, caller=7)
    before = handled("OK")
    answer = await inprocess.call(PATH, handler, generations_pb2.GetGenerationRequest(id="gen_1"), context)
    assert answer.generation.id == "gen_1"
    assert context.response_metadata() == (("x-generation-id", "gen_1"), ("x-extra", "1"))
    assert handled("OK") == before + 1


async def test_a_nul_never_reaches_the_handler():
    reached = []

    async def handler(request, context):
        reached.append(request)

    with pytest.raises(ApiError) as caught:
        await inprocess.call(PATH, handler, generations_pb2.GetGenerationRequest(id="a\x00b"), inprocess.InProcessContext((), 5))
    assert (caught.value.reason, caught.value.param) == ("INVALID_PARAMETER", "id") and not reached


async def test_errors_come_back_as_the_caller_gets_them_and_a_bug_is_logged_not_shown(caplog):
    async def refusing(request, context):
        raise invalid_parameter("id", "no such id")

    async def buggy(request, context):
        raise KeyError("secret detail")

    context = inprocess.InProcessContext((), 5)
    with pytest.raises(ApiError) as refused:
        await inprocess.call(PATH, refusing, generations_pb2.GetGenerationRequest(id="x"), context)
    assert refused.value.param == "id"
    before = handled("INTERNAL")
    with caplog.at_level(logging.ERROR), pytest.raises(ApiError) as failed:
        await inprocess.call(PATH, buggy, generations_pb2.GetGenerationRequest(id="x"), context)
    assert failed.value.code == grpc.StatusCode.INTERNAL and "secret detail" not in failed.value.message
    assert "secret detail" in caplog.text  # the operator's log has it
    assert handled("INTERNAL") == before + 1


async def test_the_deadline_holds_for_a_call_and_for_each_answer_of_a_stream():
    async def slow(request, context):
        await asyncio.sleep(5)

    async def trickling(request, context):
        yield generations_pb2.StreamGenerationResponse()
        await asyncio.sleep(5)
        yield generations_pb2.StreamGenerationResponse()

    with pytest.raises(ApiError) as caught:
        await inprocess.call(PATH, slow, generations_pb2.GetGenerationRequest(), inprocess.InProcessContext((), 0.1))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    answers = inprocess.stream(
        "/voice.gateway.v1.GenerationService/StreamGeneration", trickling,
        generations_pb2.StreamGenerationRequest(), inprocess.InProcessContext((), 0.2),
    )  # fmt: skip
    assert await anext(answers) == generations_pb2.StreamGenerationResponse()
    with pytest.raises(ApiError) as late:
        await anext(answers)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_stream_closed_by_its_caller_closes_the_handlers_stream():
    closed = asyncio.Event()

    async def endless(request, context):
        try:
            while True:
                yield generations_pb2.StreamGenerationResponse()
                await asyncio.sleep(0)
        finally:
            closed.set()  # what stops a generation whose caller went away

    answers = inprocess.stream(
        "/voice.gateway.v1.GenerationService/StreamGeneration", endless,
        generations_pb2.StreamGenerationRequest(), inprocess.InProcessContext((), 5),
    )  # fmt: skip
    await anext(answers)
    await answers.aclose()
    assert closed.is_set()
