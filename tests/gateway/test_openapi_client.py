"""A client generated from the running gateway's /openapi.json works, as a user would make and use it.

openapi-python-client generates a package from the document; a separate
Python process then uses that package alone (no code of ours) to upload a
voice sample, create a generation and get its WAV bytes. Audio media types
are mapped to bytes with the generator's own `content_type_overrides`
setting (tests/gateway/openapi-python-client.yaml, shown in the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.gateway.conftest import FIXTURES, HERE, wait_for_models

pytestmark = pytest.mark.slow

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from voicemesh_api_client import AuthenticatedClient
    from voicemesh_api_client.api.generation_service import generation_service_create_generation
    from voicemesh_api_client.api.library_service import library_service_create_voice_sample
    from voicemesh_api_client.models import (
        LibraryServiceCreateVoiceSampleFilesBody,
        VoiceGatewayV1GenerationSpec,
        VoiceGatewayV1GenerationSpecSpeakers,
        VoiceLibraryV1VoiceSample,
    )
    from voicemesh_api_client.types import File

    base_url, key, audio_path, second_path = sys.argv[1:]
    client = AuthenticatedClient(base_url=base_url, token=key, timeout=300)

    def upload(path, name, transcript):
        with open(path, "rb") as audio:
            return library_service_create_voice_sample.sync(
                client=client,
                body=LibraryServiceCreateVoiceSampleFilesBody(
                    audio=File(payload=audio, file_name="voice.webm", mime_type="audio/webm"),
                    speaker_name=name,
                    transcript=transcript,
                ),
            )

    sample = upload(audio_path, "Ada", "Hello world, this is a voice sample for testing.")
    assert isinstance(sample, VoiceLibraryV1VoiceSample), sample
    second = upload(second_path, "Bob", "The quick brown fox jumps over the lazy dog.")
    speakers = VoiceGatewayV1GenerationSpecSpeakers()
    speakers["S1"] = sample.id
    made = generation_service_create_generation.sync_detailed(
        client=client,
        body=VoiceGatewayV1GenerationSpec(
            input_="[S1] Hello there.", speakers=speakers, max_new_tokens=256, seed=3
        ),
    )
    refused = generation_service_create_generation.sync(
        client=client, body=VoiceGatewayV1GenerationSpec(input_="[S1] Hi.", temperature=9.0)
    )
    # Two cloned voices and every parameter at the client's own defaults (the published ones).
    both = VoiceGatewayV1GenerationSpecSpeakers()
    both["S1"], both["S2"] = sample.id, second.id
    defaults = generation_service_create_generation.sync_detailed(
        client=client, body=VoiceGatewayV1GenerationSpec(input_="[S1] Hello there. [S2] Hi!", speakers=both, seed=4)
    )
    print(json.dumps({
        "sample_id": sample.id,
        "speaker_name": sample.speaker_name,
        "status": int(made.status_code),
        "generation_id": made.headers.get("x-generation-id"),
        "wav_head": made.parsed.payload.read(12).decode("latin-1"),
        "wav_bytes": len(made.content),
        "refused": [refused.error.type_, refused.error.param],
        "defaults_sent": VoiceGatewayV1GenerationSpec(input_="x").to_dict(),
        "defaults_status": int(defaults.status_code),
        "defaults_max_new_tokens": defaults.headers.get("x-max-new-tokens"),
        "defaults_wav_head": defaults.content[:4].decode("latin-1"),
    }))
    """
)


async def test_a_generated_client_uploads_a_sample_and_gets_the_wav(http, mesh, accounts, tmp_path):
    alice = accounts[0]
    await wait_for_models(http, alice)
    (tmp_path / "openapi.json").write_text(json.dumps(await (await http.get("/openapi.json")).json()))
    generated = subprocess.run(
        [
            sys.executable, "-m", "openapi_python_client", "generate",
            "--path", str(tmp_path / "openapi.json"),
            "--meta", "none",
            "--output-path", str(tmp_path / "voicemesh_api_client"),
            "--config", str(HERE / "openapi-python-client.yaml"),
        ],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    for operation in ("POST /v1/voice/generations", "GET /v1/voice/generations/{id}/audio"):
        assert f"parsing {operation}" not in generated.stdout, generated.stdout

    used = subprocess.run(
        [
            sys.executable, "-c", CLIENT_SCRIPT, mesh.http_url, alice.key,
            str(FIXTURES / "speech_hello.webm"), str(FIXTURES / "speech_fox.webm"),
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert used.returncode == 0, used.stdout + used.stderr
    result = json.loads(used.stdout.strip().splitlines()[-1])
    assert result["speaker_name"] == "Ada" and result["sample_id"] > 0
    assert result["status"] == 200 and result["generation_id"].startswith("gen_")
    assert result["wav_head"].startswith("RIFF") and result["wav_head"][8:12] == "WAVE"
    assert result["wav_bytes"] > 44
    assert result["refused"] == ["invalid_parameter", "temperature"]
    stored = await (await http.get(f"/v1/voice/generations/{result['generation_id']}", headers=alice.headers)).json()
    assert stored["status"] == "succeeded" and stored["speakers"] == {"S1": result["sample_id"]}
    # The client sends the published defaults itself (max_new_tokens 3072 among them), and with two
    # cloned voices they work together: what fits beside the voices' prompt is generated.
    assert result["defaults_sent"]["max_new_tokens"] == 3072
    assert result["defaults_status"] == 200 and result["defaults_wav_head"] == "RIFF"
    assert 0 < int(result["defaults_max_new_tokens"]) < 3072


async def test_the_document_says_what_the_protos_declare(http):
    document = await (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    create = document["paths"]["/v1/voice/generations"]["post"]
    request = schemas[create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert request["required"] == ["input"]
    assert request["properties"]["temperature"] | {"description": ""} == {
        "type": "number", "format": "double", "minimum": 0.1, "maximum": 2, "default": 1.8, "description": "",
    }  # fmt: skip
    assert request["properties"]["visibility"]["enum"] == ["private", "unlisted", "public"]
    assert request["properties"]["input"]["maxLength"] == 8192  # GATEWAY_MAX_INPUT_CHARS of the running gateway
    assert "[S1]" in request["properties"]["input"]["description"]  # the proto's comment
    assert create["summary"] and create["description"]

    ok = create["responses"]["200"]
    assert list(ok["content"]) == ["audio/wav"] and ok["content"]["audio/wav"]["schema"]["format"] == "binary"
    assert "X-Generation-Id" in ok["headers"]
    for status in ("400", "401", "404", "413", "429", "502", "503"):
        assert create["responses"][status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    speech = document["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert set(speech) == {"audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm", "text/event-stream"}
    shared = document["paths"]["/v1/shared/generations/{share_token}/audio"]["get"]
    assert "401" not in shared["responses"] and shared["security"] == []
    upload = document["paths"]["/v1/voice/samples"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["audio", "speaker_name"]
    assert not any(parameter.get("required") for parameter in upload["parameters"])
