"""What OpenAI-style clients of self-hosted TTS (Open WebUI, SillyTavern, browser
apps) call besides the speech endpoint: GET /v1/models/{id}, GET /v1/audio/voices,
`instructions`, and CORS for configured origins. The `openai` package runs as a
separate process against the mesh, as a user's program would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid

import aiohttp
import pytest

from tests.conftest import ROOT
from tests.gateway.conftest import HELLO, Account, created, extra_gateway, make_key, upload_form, wait_for_models


def run_openai(mesh, account, script: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env={**os.environ, "OPENAI_BASE_URL": mesh.http_url + "/v1", "OPENAI_API_KEY": account.key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
async def erin(key_env, http) -> Account:
    name = f"erin-{uuid.uuid4().hex[:8]}"
    account = Account(name, make_key(name, key_env))
    await wait_for_models(http, account)
    return account


async def test_the_openai_client_reads_a_model_and_speaks_with_instructions(mesh, http, erin):
    sample = await created(await upload_form(http, erin, HELLO, "Erin", transcript="Hello world."))
    answer = await asyncio.to_thread(
        run_openai,
        mesh,
        erin,
        """
        import json, openai
        client = openai.OpenAI()
        model = client.models.retrieve("tiny-random")
        listed = [m.id for m in client.models.list()]
        audio = client.audio.speech.create(model="tts-1", voice="Erin", input="Hello there.",
                                           instructions="Speak softly.", response_format="wav")
        try:
            client.models.retrieve("no-such-model")
            missing = None
        except openai.NotFoundError as error:
            missing = error.status_code
        voices = client.get("/audio/voices", cast_to=object)
        print(json.dumps({"model": [model.id, model.object], "riff": audio.content[:4].decode("latin-1"),
                          "missing": missing, "voices": voices, "listed": listed}))
        """,
    )
    assert answer["model"] == ["tiny-random", "model"]
    assert "tiny-random" in answer["listed"]  # the same GET /v1/models body also serves the predictor's client
    assert answer["riff"] == "RIFF"  # instructions accepted (and not used: Dia takes none)
    assert answer["missing"] == 404
    assert {"voice_id": str(sample["id"]), "name": "Erin", "is_default": False} in answer["voices"]["voices"]


async def test_voices_are_the_callers_own(http, erin, accounts):
    await created(await upload_form(http, erin, HELLO, "Private Erin", transcript="Hello world."))
    body = await (await http.get("/v1/audio/voices", headers=accounts[1].headers)).json()
    assert "Private Erin" not in {voice["name"] for voice in body["voices"]}


async def test_cors_preflight_and_headers_for_configured_origins_only(mesh):
    async with extra_gateway(mesh, GATEWAY_CORS_ORIGINS="https://chat.example.com") as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as session:
            preflight = {
                "Origin": "https://chat.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            answer = await session.options("/v1/audio/speech", headers=preflight)
            assert answer.status == 204  # not 401: a browser's preflight carries no key
            assert answer.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
            assert "POST" in answer.headers["Access-Control-Allow-Methods"]
            assert answer.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
            # A real request from that origin may be read by the page.
            models = await session.get("/v1/models", headers={"Origin": "https://chat.example.com"})
            assert models.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
            # Another origin gets no CORS headers: its preflight is not answered for it.
            other = await session.options("/v1/audio/speech", headers={**preflight, "Origin": "https://evil.example"})
            assert "Access-Control-Allow-Origin" not in other.headers
            assert other.status == 401
