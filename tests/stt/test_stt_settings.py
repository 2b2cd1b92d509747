"""Unit tests of the STT settings' bounds and of the requested-language check."""

from __future__ import annotations

import pathlib

import pytest

from runtime.errors import ApiError
from services.stt import config
from services.stt.service import normalize_language


@pytest.mark.parametrize(
    "setting, raw, expected",
    [
        (config.STT_MAX_CONCURRENCY, "1", 1),
        (config.STT_MAX_QUEUE, "0", 0),
        (config.STT_MAX_AUDIO_SECONDS, "0.5", 0.5),
        (config.STT_DEVICE, "cpu", "cpu"),
    ],
)
def test_settings_accept_their_smallest_value(monkeypatch, setting, raw, expected):
    monkeypatch.setenv(setting.name, raw)
    assert setting.value == expected


@pytest.mark.parametrize(
    "setting, raw",
    [
        (config.STT_MAX_CONCURRENCY, "0"),
        (config.STT_MAX_QUEUE, "-1"),
        (config.STT_MAX_AUDIO_SECONDS, "0"),
        (config.STT_MAX_AUDIO_SECONDS, "ten"),
        (config.STT_DEVICE, "tpu"),
    ],
)
def test_settings_refuse_values_past_their_bound(monkeypatch, setting, raw):
    monkeypatch.setenv(setting.name, raw)
    with pytest.raises(SystemExit, match=setting.name):
        setting.value


def test_default_model_is_the_bundled_english_model(monkeypatch):
    monkeypatch.delenv("STT_MODEL", raising=False)
    files = {path.name for path in pathlib.Path(config.STT_MODEL.value).iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json"} <= files


@pytest.mark.parametrize(
    "requested, expected",
    [("", None), ("  ", None), ("en", "en"), ("EN", "en"), ("en-US", "en"), ("fr_CA", "fr")],
)
def test_language_is_normalized_to_its_iso_639_1_code(requested, expected):
    assert normalize_language(requested, ["en", "fr", "de"]) == expected


@pytest.mark.parametrize("requested", ["fr", "english", "e", "en/us"])
def test_an_english_only_model_refuses_other_languages(requested):
    with pytest.raises(ApiError) as caught:
        normalize_language(requested, ["en"])
    assert caught.value.reason == "UNSUPPORTED_LANGUAGE"
    assert caught.value.param == "language"
    assert "English" in caught.value.message


def test_a_multilingual_model_refuses_an_unknown_code():
    with pytest.raises(ApiError) as caught:
        normalize_language("xx", ["en", "fr"])
    assert caught.value.reason == "UNSUPPORTED_LANGUAGE"
