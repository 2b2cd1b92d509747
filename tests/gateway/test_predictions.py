"""The hosted predictor's API (predictions.py) driven by its own official client,
the unmodified `replicate` package, run as a separate process with nothing but
REPLICATE_BASE_URL and REPLICATE_API_TOKEN pointing it at the mesh (tiny random Dia).

The tiny model always generates max_new_tokens frames, so the seed's least
(500 frames, about 6 s of audio) keeps each prediction to a few seconds."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import textwrap
import wave

import pytest

from services.gateway.generation import predictions
from tests.conftest import ROOT
from tests.gateway.conftest import FIXTURES, wait_for_models

QUICK = {"text": "[S1] Hello there. [S2] Hi!", "max_new_tokens": 500}


def run_client(mesh, account, script: str, timeout: float = 120, **env: str) -> dict:
    """Run `script` in a fresh Python with the predictor client's two variables; it prints one JSON line."""
    environment = {
        **os.environ,
        "REPLICATE_BASE_URL": mesh.http_url,
        "REPLICATE_API_TOKEN": account.key,
        "REPLICATE_POLL_INTERVAL": "0.2",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def is_wav(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as audio:
        return audio.getnframes() / audio.getframerate()


@pytest.fixture(scope="module")
async def online(http, accounts, mesh):
    await wait_for_models(http, accounts[0])
    return mesh


# --- units -------------------------------------------------------------------------------


def test_prefer_wait_is_read_as_the_predictor_documents_it():
    assert predictions.wait_seconds("wait", 60) == 60
    assert predictions.wait_seconds("wait=5", 60) == 5
    assert predictions.wait_seconds("wait=500", 60) == 60
    assert predictions.wait_seconds("respond-async, wait=3", 60) == 3
    assert predictions.wait_seconds("", 60) == 0
    assert predictions.wait_seconds("waiting", 60) == 0


def test_the_models_input_schema_is_the_seeds():
    properties = predictions.input_schema()["components"]["schemas"]["Input"]["properties"]
    assert properties["temperature"] == {**properties["temperature"], "default": 1.3, "minimum": 0, "maximum": 2}
    assert (properties["cfg_filter_top_k"]["minimum"], properties["cfg_filter_top_k"]["maximum"]) == (10, 100)
    assert properties["cfg_filter_top_k"]["default"] == 35
    assert (properties["speed_factor"]["minimum"], properties["speed_factor"]["maximum"], properties["speed_factor"]["default"]) == (0.5, 1.5, 0.94)
    assert (properties["max_new_tokens"]["minimum"], properties["max_new_tokens"]["maximum"], properties["max_new_tokens"]["default"]) == (500, 4096, 3072)
    assert (properties["max_audio_prompt_seconds"]["minimum"], properties["max_audio_prompt_seconds"]["maximum"], properties["max_audio_prompt_seconds"]["default"]) == (1, 120, 10)
    assert properties["max_audio_prompt_seconds"]["type"] == "integer"
    assert "default" not in properties["seed"] and "minimum" not in properties["seed"]
    assert properties["audio_prompt"]["format"] == "uri"
    assert list(properties) == [
        "text", "audio_prompt", "max_new_tokens", "max_audio_prompt_seconds", "cfg_scale", "temperature", "top_p",
        "cfg_filter_top_k", "speed_factor", "seed",
    ]


# --- through the client ------------------------------------------------------------------


async def test_replicate_run_returns_the_wav_url_usable_with_the_same_key(online, accounts):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        f"""
        import json, replicate
        from replicate.helpers import FileOutput
        url = replicate.run("nari-labs/dia", input={QUICK!r}, use_file_output=False)
        # The client wraps https:// outputs itself; over plain http it hands back the URL, which its
        # FileOutput reads with the same key.
        data = FileOutput(url, replicate.default_client).read()
        print(json.dumps({{"url": url, "size": len(data), "riff": data[:4].decode("latin-1")}}))
        """,
    )
    assert answer["url"].startswith(online.http_url + "/v1/voice/generations/gen_")
    assert answer["riff"] == "RIFF" and answer["size"] > 1000


async def test_create_wait_reload_list_and_the_prediction_object(online, accounts, http):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        f"""
        import json, replicate
        model = replicate.models.get("nari-labs/dia")
        version = model.latest_version
        schema = version.openapi_schema["components"]["schemas"]["Input"]["properties"]
        prediction = replicate.predictions.create(version=version.id, input={QUICK!r})
        first = prediction.status
        prediction.wait()
        again = replicate.predictions.get(prediction.id)
        listed = [p.id for p in replicate.predictions.list().results]
        by_model = replicate.models.predictions.create(model="nari-labs/dia", input={{**{QUICK!r}, "seed": 5}})
        by_model.wait()
        print(json.dumps({{
            "first": first, "status": prediction.status, "output": prediction.output, "id": prediction.id,
            "model": prediction.model, "version": prediction.version, "input": prediction.input,
            "logs": prediction.logs, "metrics": prediction.metrics, "urls": prediction.urls,
            "times": [prediction.created_at, prediction.started_at, prediction.completed_at],
            "again": again.status, "listed": listed, "temperature_default": schema["temperature"]["default"],
            "by_model": [by_model.status, by_model.input.get("seed")], "version_id": version.id,
        }}))
        """,
    )
    assert answer["first"] in ("starting", "processing")  # answered at once, not waited for
    assert answer["status"] == answer["again"] == "succeeded"
    assert answer["model"] == "nari-labs/dia" and answer["version"] == answer["version_id"]
    assert answer["input"] == QUICK
    assert answer["metrics"]["predict_time"] > 0
    assert all(answer["times"])
    assert answer["urls"]["get"].endswith(f"/v1/predictions/{answer['id']}")
    assert "generated" in answer["logs"]
    assert answer["id"] in answer["listed"]
    assert answer["temperature_default"] == 1.3
    assert answer["by_model"] == ["succeeded", 5]
    audio = await http.get(answer["output"].removeprefix(online.http_url), headers=accounts[0].headers)
    assert audio.status == 200 and is_wav(await audio.read()) > 1
    # The same history as generations.
    history = await http.get(f"/v1/voice/generations/{answer['id']}", headers=accounts[0].headers)
    assert (await history.json())["status"] == "succeeded"


async def test_errors_reach_the_client_as_problem_details(online, accounts):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        """
        import json, replicate
        from replicate.exceptions import ReplicateError
        found = {}
        for name, call in {
            "temperature": lambda: replicate.run("nari-labs/dia", input={"text": "[S1] Hi.", "temperature": 2.5}),
            "top_k": lambda: replicate.run("nari-labs/dia", input={"text": "[S1] Hi.", "cfg_filter_top_k": 5}),
            "model": lambda: replicate.run("someone/else", input={"text": "[S1] Hi."}),
            "url": lambda: replicate.run("nari-labs/dia", input={"text": "[S1] Hi.", "audio_prompt": "http://169.254.169.254/x.wav"}),
        }.items():
            try:
                call()
                found[name] = None
            except ReplicateError as error:
                found[name] = [error.status, error.title, error.detail]
        print(json.dumps(found))
        """,
    )
    assert answer["temperature"][0] == 400 and "temperature" in answer["temperature"][2]
    assert answer["top_k"][0] == 400 and "cfg_filter_top_k" in answer["top_k"][2]
    assert answer["model"][0] == 404 and "someone/else" in answer["model"][2]
    assert answer["url"][0] == 400 and "GATEWAY_PREDICTION_URL_ALLOW_LIST" in answer["url"][2]


async def test_cancel_stops_a_running_prediction(online, accounts):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        """
        import json, time, replicate
        prediction = replicate.models.predictions.create(
            model="nari-labs/dia", input={"text": "[S1] A long one.", "max_new_tokens": 4096})
        while prediction.status == "starting":
            time.sleep(0.1)
            prediction.reload()
        canceled = replicate.predictions.cancel(prediction.id)
        time.sleep(1.5)
        prediction.reload()
        print(json.dumps({"canceled": canceled.status, "later": prediction.status, "output": prediction.output}))
        """,
    )
    assert answer == {"canceled": "canceled", "later": "canceled", "output": None}


async def test_an_uploaded_audio_prompt_is_cloned_with_its_transcript(online, accounts, http):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[1],
        f"""
        import json, replicate
        with open({str(FIXTURES / "speech_hello.webm")!r}, "rb") as clip:
            prediction = replicate.models.predictions.create(
                model="nari-labs/dia", input={{**{QUICK!r}, "audio_prompt": clip, "max_audio_prompt_seconds": 2}}, wait=True)
        files = replicate.files.list()
        print(json.dumps({{"status": prediction.status, "error": prediction.error, "id": prediction.id,
                          "audio_prompt": prediction.input["audio_prompt"], "files": [f.id for f in files]}}))
        """,
    )
    assert answer["status"] == "succeeded", answer["error"]
    assert "/v1/files/file_" in answer["audio_prompt"] and answer["files"]
    generation = await (await http.get(f"/v1/voice/generations/{answer['id']}", headers=accounts[1].headers)).json()
    sample = await (await http.get(f"/v1/voice/samples/{generation['speakers']['S1']}", headers=accounts[1].headers)).json()
    assert "hello" in sample["transcript"].lower()  # speech recognition filled it in
    # Another account can neither read the file nor use it.
    file_id = answer["files"][0]
    assert (await http.get(f"/v1/files/{file_id}", headers=accounts[0].headers)).status == 404
