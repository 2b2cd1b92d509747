"""The contracts: buf STANDARD style, HTTP annotations on the public API, generated stubs."""

from __future__ import annotations

import re

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pool

from tests.conftest import ROOT
from tools import buf_lint

# Importing the generated modules registers their descriptors in the default pool.
from voice.api.v1 import annotations_pb2 as voice_annotations
from voice.gateway.v1 import accounts_pb2, generations_pb2, models_pb2  # noqa: F401
from voice.library.v1 import library_pb2  # noqa: F401
from voice.openai.v1 import speech_pb2  # noqa: F401
from voice.predictor.v1 import predictions_pb2  # noqa: F401

PUBLIC_SERVICES = [
    "voice.library.v1.LibraryService",
    "voice.gateway.v1.GenerationService",
    "voice.gateway.v1.ModelService",
    "voice.predictor.v1.PredictionService",
    "voice.openai.v1.SpeechService",
    "voice.predictor.v1.FileService",
    "voice.predictor.v1.WebhookService",
    "voice.gateway.v1.KeyService",
    "voice.gateway.v1.AccountService",
    "voice.gateway.v1.UsageService",
]
# The public methods any key of an account may call, whatever its scopes: what models are online, who is calling.
ANY_KEY = {
    "voice.gateway.v1.ModelService.ListModels",
    "voice.gateway.v1.ModelService.GetModel",
    "voice.predictor.v1.PredictionService.GetPredictionModel",
    "voice.predictor.v1.PredictionService.GetPredictionModelVersion",
    "voice.gateway.v1.KeyService.GetCaller",
}


def test_protos_follow_buf_standard_lint():
    if not buf_lint.BUF.exists():
        pytest.skip("buf is not installed (make installs it under var/buf with npm; npm missing?)")
    result = buf_lint.lint()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service_name", PUBLIC_SERVICES)
def test_every_public_rpc_has_an_http_rule(service_name):
    """Its own, or that of the method it streams or downloads for (voice.api.v1.method's stream_method and
    download_method); a method named as another's stream or download is one of the service's methods."""
    service = descriptor_pool.Default().FindServiceByName(service_name)
    names = {method.name for method in service.methods}
    answered_for = set()
    for method in service.methods:
        rules = method.GetOptions().Extensions[voice_annotations.method]
        for other in (rules.stream_method, rules.download_method):
            if other:
                assert other in names, f"{method.full_name} names {other}, which {service_name} does not have"
                answered_for.add(other)
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        assert rule.WhichOneof("pattern") or method.name in answered_for, f"{method.full_name} has no google.api.http rule"


@pytest.mark.parametrize("service_name", PUBLIC_SERVICES)
def test_every_public_rpc_that_needs_a_key_declares_the_scope_it_needs(service_name):
    """Declared in the proto, beside its other rules (the edge and the gateway's servicers check it), and
    one of the scopes a key may have; only the few that any key may call declare none."""
    from services.gateway.accounts import SCOPES

    for method in descriptor_pool.Default().FindServiceByName(service_name).methods:
        rules = method.GetOptions().Extensions[voice_annotations.method]
        if rules.authentication == voice_annotations.AUTHENTICATION_NONE:
            assert not rules.scope, f"{method.full_name} needs no key, yet declares a scope"
        elif method.full_name in ANY_KEY:
            assert rules.scope == "", method.full_name
        else:
            assert rules.scope in SCOPES, f"{method.full_name} declares no scope, or one that is none: {rules.scope!r}"


def test_raw_audio_travels_as_http_body():
    sample_upload = descriptor_pool.Default().FindMessageTypeByName(
        "voice.library.v1.CreateVoiceSampleRequest"
    )
    assert sample_upload.fields_by_name["audio"].message_type.full_name == "google.api.HttpBody"


def test_generated_code_has_type_stubs():
    stubs = list((ROOT / "gen" / "voice").rglob("*_pb2.pyi"))
    protos = list((ROOT / "protos").rglob("*.proto"))
    assert len(stubs) == len(protos)


def _voice_options(pool: descriptor_pool.DescriptorPool):
    """Every (voice.api.v1.method) and (voice.api.v1.field) option of our protos, with where it is."""
    from google.protobuf import descriptor_pb2

    raw = (ROOT / "gen" / "voice" / "descriptors.binpb").read_bytes()
    for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        if not file.name.startswith("voice/"):
            continue
        described = pool.FindFileByName(file.name)
        messages = list(described.message_types_by_name.values())
        while messages:
            message = messages.pop()
            messages += message.nested_types
            for field in message.fields:
                if field.GetOptions().HasExtension(voice_annotations.field):
                    yield field.full_name, field.GetOptions().Extensions[voice_annotations.field]
        for service in described.services_by_name.values():
            for method in service.methods:
                if method.GetOptions().HasExtension(voice_annotations.method):
                    yield method.full_name, method.GetOptions().Extensions[voice_annotations.method]


def _strings(option):
    for field, value in option.ListFields():
        for item in value if field.is_repeated else [value]:
            if isinstance(item, str):
                yield field.name, item
            elif hasattr(item, "ListFields"):
                yield from _strings(item)


def test_protos_name_limits_and_never_settings():
    """A rule that depends on configuration names a limit its service publishes (snake_case),
    not an environment variable: the gateway would resolve that in its own environment."""
    import importlib

    from runtime import config
    from tools import mesh

    for name in mesh.existing_services():  # every service's settings, to recognise their names
        importlib.import_module(f"services.{name}.service")
    pool = descriptor_pool.Default()
    for message in (voice_annotations.MethodRules, voice_annotations.FieldRules):
        assert not [name for name in message.DESCRIPTOR.fields_by_name if name.endswith("_setting")]
    options = list(_voice_options(pool))
    limits = [(where, name, value) for where, option in options for name, value in _strings(option) if name.endswith("_limit")]
    assert {value for _, _, value in limits} >= {"synth_timeout_seconds", "input_chars", "speaker_name_chars"}
    for where, name, value in limits:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", value), f"{where}: {name} {value!r} is no limit name"
    for where, option in options:
        for name, value in _strings(option):
            named = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", value)) & set(config.REGISTRY)
            assert not named, f"{where}: {name} names the setting {sorted(named)}"
