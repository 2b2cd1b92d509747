"""The contracts: buf STANDARD style, HTTP annotations on the public API, generated stubs."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pool

from tests.conftest import ROOT
from tools import buf_lint

# Importing the generated modules registers their descriptors in the default pool.
from voice.api.v1 import annotations_pb2 as voice_annotations
from voice.gateway.v1 import generations_pb2, models_pb2  # noqa: F401
from voice.library.v1 import library_pb2  # noqa: F401
from voice.openai.v1 import speech_pb2  # noqa: F401
from voice.predictor.v1 import predictions_pb2  # noqa: F401

PUBLIC_SERVICES = [
    "voice.library.v1.LibraryService",
    "voice.gateway.v1.GenerationService",
    "voice.gateway.v1.ModelService",
    "voice.predictor.v1.PredictionService",
    "voice.openai.v1.SpeechService",
]


def test_protos_follow_buf_standard_lint():
    if not buf_lint.BUF.exists():
        pytest.skip("buf is not installed (make installs it under var/buf with npm; npm missing?)")
    result = buf_lint.lint()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service_name", PUBLIC_SERVICES)
def test_every_public_rpc_has_an_http_rule(service_name):
    """Its own, or that of the method it streams for (voice.api.v1.method's stream_method)."""
    service = descriptor_pool.Default().FindServiceByName(service_name)
    streamed = {method.GetOptions().Extensions[voice_annotations.method].stream_method for method in service.methods}
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        assert rule.WhichOneof("pattern") or method.name in streamed, f"{method.full_name} has no google.api.http rule"


def test_raw_audio_travels_as_http_body():
    sample_upload = descriptor_pool.Default().FindMessageTypeByName(
        "voice.library.v1.CreateVoiceSampleRequest"
    )
    assert sample_upload.fields_by_name["audio"].message_type.full_name == "google.api.HttpBody"


def test_generated_code_has_type_stubs():
    stubs = list((ROOT / "gen" / "voice").rglob("*_pb2.pyi"))
    protos = list((ROOT / "protos").rglob("*.proto"))
    assert len(stubs) == len(protos)
