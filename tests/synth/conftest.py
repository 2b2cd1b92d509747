"""Fixtures of the synth tests: the tiny model, loaded in process, and the mesh's synth."""

from __future__ import annotations

import grpc
import pytest

from runtime.server import channel_options
from services.synth import config, tiny_models
from voice.synth.v1 import synth_pb2_grpc


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny random-weight Dia and codec, built as `make tiny-models` does when missing."""
    return tiny_models.ensure(config.tiny_model_dir())


@pytest.fixture(scope="session")
def dia(tiny_model_dir):
    """The tiny Dia and its codec loaded in this process (as synth loads them), for tests that look at tokens."""
    from services.synth.engine import model

    return model.load(str(tiny_model_dir / "dia"), str(tiny_model_dir / "dac"), config.TINY_MODEL_NAME, "cpu", threads=1)


@pytest.fixture(scope="session")
async def synth(mesh):
    """A SynthService stub on the session's running synth (which serves the tiny model)."""
    async with grpc.aio.insecure_channel(mesh.address("synth"), options=channel_options()) as channel:
        yield synth_pb2_grpc.SynthServiceStub(channel)
