"""The hosted predictor's API (dialects/predictor/) driven by its own official client,
the unmodified `replicate` package, run as a separate process with nothing but
REPLICATE_BASE_URL and REPLICATE_API_TOKEN pointing it at the mesh (tiny random Dia).

The tiny model always generates max_new_tokens frames, so the seed's least
(500 frames, about 6 s of audio) keeps each prediction to a few seconds."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
import wave

import aiohttp
import pytest
import replicate
from aiohttp import web

from services.gateway.dialects.predictor import inputs, predictions
from services.gateway.generation import webhooks
from tests.conftest import ROOT, free_port
from tests.gateway.conftest import FIXTURES, Account, assert_error, extra_gateway, make_key, wait_for_models

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


def start_prediction(mesh, account, text: str, max_new_tokens: int) -> dict:
    """Through the client, create a prediction and wait until it leaves `starting`: its id and status."""
    return run_client(
        mesh,
        account,
        f"""
        import json, time, replicate
        prediction = replicate.models.predictions.create(
            model="nari-labs/dia", input={{"text": {text!r}, "max_new_tokens": {max_new_tokens}}})
        while prediction.status == "starting":
            time.sleep(0.1)
            prediction.reload()
        print(json.dumps({{"id": prediction.id, "status": prediction.status}}))
        """,
    )


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
    properties = inputs.schema()["components"]["schemas"]["Input"]["properties"]
    assert properties["temperature"] == {**properties["temperature"], "default": 1.3, "minimum": 0, "maximum": 2}
    assert (properties["cfg_filter_top_k"]["minimum"], properties["cfg_filter_top_k"]["maximum"]) == (10, 100)
    assert properties["cfg_filter_top_k"]["default"] == 35
    assert (properties["speed_factor"]["minimum"], properties["speed_factor"]["maximum"], properties["speed_factor"]["default"]) == (0.5, 1.5, 0.94)
    assert (properties["max_new_tokens"]["minimum"], properties["max_new_tokens"]["maximum"], properties["max_new_tokens"]["default"]) == (500, 4096, 3072)
    assert (properties["max_audio_prompt_seconds"]["minimum"], properties["max_audio_prompt_seconds"]["maximum"], properties["max_audio_prompt_seconds"]["default"]) == (1, 120, 10)
    assert properties["max_audio_prompt_seconds"]["type"] == "integer"
    assert "default" not in properties["seed"] and "minimum" not in properties["seed"]
    assert properties["audio_prompt"]["format"] == "uri"
    # The seed's inputs in its order, then this gateway's one extra: best_of (README: "best_of").
    assert list(properties) == [
        "text", "audio_prompt", "max_new_tokens", "max_audio_prompt_seconds", "cfg_scale", "temperature", "top_p",
        "cfg_filter_top_k", "speed_factor", "seed", "best_of",
    ]
    assert (properties["best_of"]["minimum"], properties["best_of"]["maximum"], properties["best_of"]["default"]) == (1, 4, 1)


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://files.example.com/voices/a.wav", True),
        ("https://files.example.com/voices/../admin", False),  # dot segments resolved first
        ("https://files.example.com.evil.net/voices/a", False),  # a longer host is another host
        ("https://me@files.example.com/voices/a", False),
        ("http://files.example.com/voices/a", False),  # another scheme
        ("https://files.example.com:444/voices/a", False),  # another port
        ("https://files.example.com/voicesx/a", False),
        ("ftp://files.example.com/voices/a", False),
        ("http://127.0.0.1:9000/hook", True),
        ("http://127.0.0.1:9000/hooks", False),
    ],
)
def test_only_urls_under_an_allowed_prefix_are_fetched_or_posted_to(url, allowed):
    assert webhooks.is_allowed(url, ["https://files.example.com/voices/", "http://127.0.0.1:9000/hook"]) is allowed
    assert webhooks.is_allowed(url, []) is False


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
        # Without Prefer: wait the client polls the prediction until it ends.
        polled = replicate.run("nari-labs/dia", input={QUICK!r}, wait=False)
        print(json.dumps({{"url": url, "size": len(data), "riff": data[:4].decode("latin-1"), "polled": str(polled)}}))
        """,
    )
    assert answer["url"].startswith(online.http_url + "/v1/signed/generations/gen_")
    assert answer["riff"] == "RIFF" and answer["size"] > 1000
    assert answer["polled"].startswith(online.http_url + "/v1/signed/generations/gen_") and answer["polled"] != answer["url"]


async def test_the_output_url_is_fetched_without_a_key_with_head_and_byte_ranges(online, accounts):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        f"""
        import json, os, urllib.request, requests, replicate
        from replicate.helpers import FileOutput
        output = str(replicate.run("nari-labs/dia", input={QUICK!r}))
        del os.environ["REPLICATE_API_TOKEN"]  # no key from here on
        path, _ = urllib.request.urlretrieve(output)
        retrieved = open(path, "rb").read()
        fetched = requests.get(output)
        read = FileOutput(output, replicate.Client()).read()  # a client without a key
        size = len(fetched.content)
        head = requests.head(output)
        first = requests.get(output, headers={{"Range": "bytes=0-99"}})
        last = requests.get(output, headers={{"Range": "bytes=-10"}})
        beyond = requests.get(output, headers={{"Range": f"bytes={{size}}-"}})
        generation = output.split("/v1/signed/generations/")[1].split("/")[0]
        keyed = requests.get(output.split("/v1/")[0] + f"/v1/voice/generations/{{generation}}/audio")
        print(json.dumps({{
            "same": retrieved == fetched.content == read, "riff": retrieved[:4].decode("latin-1"), "size": size,
            "head": [head.status_code, head.headers.get("Content-Length"), len(head.content)],
            "first": [first.status_code, first.headers.get("Content-Range"), first.content == fetched.content[:100]],
            "last": [last.status_code, last.headers.get("Content-Range"), last.content == fetched.content[-10:]],
            "beyond": [beyond.status_code, beyond.headers.get("Content-Range"), beyond.json()["error"]["type"]],
            "keyed": keyed.status_code,
        }}))
        """,
    )
    size = answer["size"]
    assert answer["same"] and answer["riff"] == "RIFF" and size > 1000
    assert answer["head"] == [200, str(size), 0]
    assert answer["first"] == [206, f"bytes 0-99/{size}", True]
    assert answer["last"] == [206, f"bytes {size - 10}-{size - 1}/{size}", True]
    assert answer["beyond"] == [416, f"bytes */{size}", "range_not_satisfiable"]
    assert answer["keyed"] == 401  # the key-authenticated URL of the same audio still needs the key


async def test_every_max_new_tokens_of_the_page_works_and_the_metrics_say_what_was_used(online, accounts, http):
    """The model page allows max_new_tokens up to 4096; Dia's decoder holds 3072 frames: the prediction
    gets those, and its metrics (as the history) say so."""
    answer = run_client(
        online,
        accounts[0],
        """
        import json, replicate
        prediction = replicate.models.predictions.create(
            model="nari-labs/dia", input={"text": "[S1] As long as it may be.", "max_new_tokens": 4096, "seed": 2})
        prediction.wait()
        print(json.dumps({"id": prediction.id, "status": prediction.status, "metrics": prediction.metrics}))
        """,
        timeout=300,
    )
    assert answer["status"] == "succeeded", answer
    assert answer["metrics"]["max_new_tokens"] == 3072
    stored = await (await http.get(f"/v1/voice/generations/{answer['id']}", headers=accounts[0].headers)).json()
    assert stored["parameters"]["max_new_tokens"] == 3072


async def test_create_wait_reload_list_and_the_prediction_object(online, accounts, http):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        f"""
        import json, replicate
        model = replicate.models.get("nari-labs/dia")
        listed_models = [m.owner + "/" + m.name for m in replicate.models.list()]
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
            "models": listed_models,
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
    assert answer["models"] == ["nari-labs/dia"]  # the test model's id, tiny-random, is not owner/name
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
        import io, json, replicate
        with open({str(FIXTURES / "speech_hello.webm")!r}, "rb") as clip:
            prediction = replicate.models.predictions.create(
                model="nari-labs/dia", input={{**{QUICK!r}, "audio_prompt": clip, "max_audio_prompt_seconds": 2}}, wait=True)
        files = replicate.files.list()
        spare = replicate.files.create(io.BytesIO(b"not needed"), metadata={{"purpose": "test"}})
        fetched = replicate.files.get(spare.id)
        deleted = replicate.files.delete(spare.id)
        print(json.dumps({{"status": prediction.status, "error": prediction.error, "id": prediction.id,
                          "audio_prompt": prediction.input["audio_prompt"], "files": [f.id for f in files],
                          "spare": [fetched.size, fetched.metadata, fetched.checksums["sha256"][:8], deleted],
                          "after": [f.id for f in replicate.files.list()]}}))
        """,
    )
    assert answer["spare"] == [10, {"purpose": "test"}, "27a11f62", True]  # DELETE answers 204, as the client wants
    assert answer["after"] == answer["files"]
    assert answer["status"] == "succeeded", answer["error"]
    assert "/v1/files/file_" in answer["audio_prompt"] and answer["files"]
    generation = await (await http.get(f"/v1/voice/generations/{answer['id']}", headers=accounts[1].headers)).json()
    sample = await (await http.get(f"/v1/voice/samples/{generation['speakers']['S1']}", headers=accounts[1].headers)).json()
    assert "hello" in sample["transcript"].lower()  # speech recognition filled it in
    # Another account can neither read the file nor use it.
    file_id = answer["files"][0]
    assert (await http.get(f"/v1/files/{file_id}", headers=accounts[0].headers)).status == 404


# --- two gateways: shared state, webhooks, paging ------------------------------------------


class Receiver:
    """A local webhook target: answers 500 to the first delivery (to be retried), 200 after."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict, bytes]] = []
        self.refused = 0
        self.port = free_port()

    async def voice(self, request: web.Request) -> web.Response:
        return web.Response(body=(FIXTURES / "speech_fox.webm").read_bytes(), content_type="audio/webm")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refused == 0:
            self.refused += 1
            return web.Response(status=500)
        self.deliveries.append((dict(request.headers), body))
        return web.Response(status=204)


@pytest.fixture(scope="module")
async def receiver():
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    app.router.add_get("/voices/fox.webm", found.voice)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


@pytest.fixture(scope="module")
async def second(online, receiver):
    """A second gateway replica beside the mesh's, on the same database."""
    async with extra_gateway(
        online,
        GATEWAY_PREDICTIONS_PAGE_SIZE="2",
        GATEWAY_WEBHOOK_ALLOW_LIST=f"http://127.0.0.1:{receiver.port}/",
        GATEWAY_PREDICTION_URL_ALLOW_LIST=f"http://127.0.0.1:{receiver.port}/voices/",
    ) as gateway:
        yield gateway


async def synth_stopped(mesh) -> float:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(f"http://127.0.0.1:{mesh.env['SYNTH_METRICS_PORT']}/metrics")).text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("synth_generations_stopped_total"))


async def test_cancel_through_another_replica_stops_the_generation(online, second, accounts):
    stopped_before = await synth_stopped(online)
    created = await asyncio.to_thread(start_prediction, second, accounts[0], "[S1] A long one.", 4096)
    assert created["status"] == "processing"
    answer = await asyncio.to_thread(
        run_client,
        online,  # the mesh's own gateway, not the one running it
        accounts[0],
        f"""
        import json, replicate
        print(json.dumps({{"status": replicate.predictions.cancel({created["id"]!r}).status}}))
        """,
    )
    assert answer["status"] == "canceled"
    for _ in range(100):  # the running replica sees it within a second; the provider stops
        if await synth_stopped(online) > stopped_before:
            break
        await asyncio.sleep(0.1)
    assert await synth_stopped(online) > stopped_before


async def test_a_prediction_canceled_and_deleted_through_another_replica_stops_at_once(online, second, accounts, http):
    stopped_before = await synth_stopped(online)
    created = await asyncio.to_thread(start_prediction, second, accounts[0], "[S1] A long one.", 4096)
    assert created["status"] == "processing"
    path = f"/v1/voice/generations/{created['id']}"
    await assert_error(await http.delete(path, headers=accounts[0].headers), 409, "generation_under_way")
    # Through the mesh's own gateway, not the one running it, before that one renews its lease.
    assert (await http.post(f"/v1/predictions/{created['id']}/cancel", json={}, headers=accounts[0].headers)).status == 200
    assert (await http.delete(path, headers=accounts[0].headers)).status == 204
    for _ in range(100):  # the running replica sees it is gone within a second; the provider stops
        if await synth_stopped(online) > stopped_before:
            break
        await asyncio.sleep(0.1)
    assert await synth_stopped(online) > stopped_before
    await assert_error(await http.get(f"/v1/predictions/{created['id']}", headers=accounts[0].headers), 404, "not_found")


async def test_webhooks_are_signed_retried_and_filtered(online, second, accounts, receiver):
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    answer = await asyncio.to_thread(
        run_client,
        second,
        accounts[0],
        f"""
        import json, replicate
        from replicate.exceptions import ReplicateError
        prediction = replicate.models.predictions.create(
            model="nari-labs/dia", input={QUICK!r}, webhook={hook!r}, webhook_events_filter=["completed"])
        prediction.wait()
        try:
            replicate.models.predictions.create(
                model="nari-labs/dia", input={QUICK!r}, webhook="http://169.254.169.254/latest")
            refused = None
        except ReplicateError as error:
            refused = [error.status, error.detail]
        print(json.dumps({{"id": prediction.id, "secret": replicate.webhooks.default.secret().key, "refused": refused}}))
        """,
    )
    assert answer["refused"][0] == 400 and "GATEWAY_WEBHOOK_ALLOW_LIST" in answer["refused"][1]
    for _ in range(100):  # the refused first try is retried after a second
        if receiver.deliveries:
            break
        await asyncio.sleep(0.1)
    assert receiver.refused == 1 and len(receiver.deliveries) == 1  # "completed" only: no "start"
    headers, body = receiver.deliveries[0]
    secret = replicate.webhook.WebhookSigningSecret(key=answer["secret"])
    assert replicate.webhooks.validate(headers=headers, body=body.decode(), secret=secret, tolerance=300) is None
    delivered = json.loads(body)
    assert delivered["id"] == answer["id"] and delivered["status"] == "succeeded" and delivered["output"]
    with pytest.raises(replicate.webhook.InvalidSignatureError):
        replicate.webhooks.validate(headers=headers, body=body.decode().replace("succeeded", "failed"), secret=secret)


async def test_predictions_are_listed_in_cursor_pages(second, key_env):
    account = Account("pager", make_key(f"pager-{uuid.uuid4().hex[:8]}", key_env))
    answer = await asyncio.to_thread(
        run_client,
        second,
        account,
        """
        import json, replicate
        made = []
        for n in range(3):
            prediction = replicate.models.predictions.create(
                model="nari-labs/dia", input={"text": f"[S1] Number {n}.", "max_new_tokens": 4096})
            made.append(replicate.predictions.cancel(prediction.id).id)
        first = replicate.predictions.list()
        second = replicate.predictions.list(first.next)
        every = [p.id for page in replicate.paginate(replicate.predictions.list) for p in page]
        print(json.dumps({"made": made, "first": [p.id for p in first], "next": first.next,
                          "second": [p.id for p in second], "last_next": second.next, "every": every}))
        """,
    )
    newest_first = answer["made"][::-1]
    assert answer["first"] == newest_first[:2] and answer["second"] == newest_first[2:]
    assert answer["next"] and answer["last_next"] is None
    assert answer["every"] == newest_first


async def test_a_prediction_outlives_its_gateway(online, accounts):
    async with extra_gateway(online) as doomed:
        created = await asyncio.to_thread(start_prediction, doomed, accounts[1], "[S1] Still here.", 1000)
        await doomed.stop_service("gateway", signal.SIGKILL)  # no hand-over: its lease runs out
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[1],
        f"""
        import json, replicate
        prediction = replicate.predictions.get({created["id"]!r})
        prediction.wait()
        print(json.dumps({{"status": prediction.status, "error": prediction.error, "output": prediction.output,
                          "logs": prediction.logs}}))
        """,
    )
    assert answer["status"] == "succeeded", answer["error"]
    assert answer["output"]
    assert "its gateway stopped" in answer["logs"]


async def test_audio_prompt_as_allowed_url_data_uri_and_sample(online, second, accounts, receiver, http):
    fox = base64.b64encode((FIXTURES / "speech_fox.webm").read_bytes()).decode()
    answer = await asyncio.to_thread(
        run_client,
        second,
        accounts[0],
        f"""
        import json, replicate
        from replicate.exceptions import ReplicateError
        base = {{**{QUICK!r}, "temperature": 0}}  # 0 = greedy, as the seed allows
        url = replicate.run("nari-labs/dia", use_file_output=False,
                            input={{**base, "audio_prompt": "http://127.0.0.1:{receiver.port}/voices/fox.webm"}})
        data = replicate.models.predictions.create(
            model="nari-labs/dia", input={{**base, "audio_prompt": "data:audio/webm;base64,{fox}"}}, wait=True)
        refused = {{}}
        for name, prompt in {{"elsewhere": "http://127.0.0.1:{receiver.port}/hook",
                             "foreign_sample": "sample:999999999", "bad_data": "data:audio/wav;base64,@@@"}}.items():
            try:
                replicate.run("nari-labs/dia", input={{**base, "audio_prompt": prompt}})
            except ReplicateError as error:
                refused[name] = [error.status, error.detail]
        print(json.dumps({{"url": url, "data": [data.status, data.id], "refused": refused}}))
        """,
    )
    assert answer["url"].startswith(second.http_url + "/v1/signed/generations/")
    assert answer["data"][0] == "succeeded"
    assert answer["refused"]["elsewhere"][0] == 400  # not under the allow-listed prefix
    assert answer["refused"]["foreign_sample"][0] == 400
    assert answer["refused"]["bad_data"][0] == 400 and "base64" in answer["refused"]["bad_data"][1]
    # The URL and the data URI held the same audio: one sample, transcribed once.
    url_generation = "/v1/voice/generations/" + answer["url"].split("/v1/signed/generations/")[1].split("/")[0]
    first = await (await http.get(url_generation, headers=accounts[0].headers)).json()
    second_ = await (await http.get(f"/v1/voice/generations/{answer['data'][1]}", headers=accounts[0].headers)).json()
    assert first["speakers"] == second_["speakers"]
    assert first["parameters"]["temperature"] == 0
    sample = await (await http.get(f"/v1/voice/samples/{first['speakers']['S1']}", headers=accounts[0].headers)).json()
    assert "fox" in sample["transcript"].lower()


async def test_a_gateway_stopping_gracefully_hands_its_predictions_over(online, accounts):
    async with extra_gateway(online) as stopping:
        created = await asyncio.to_thread(start_prediction, stopping, accounts[1], "[S1] Carry on.", 1000)
        await stopping.stop_service("gateway", signal.SIGTERM)  # a rolling update, say
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[1],
        f"""
        import json, time, replicate
        prediction = replicate.predictions.get({created["id"]!r})
        prediction.wait()
        print(json.dumps({{"status": prediction.status, "error": prediction.error}}))
        """,
    )
    assert answer == {"status": "succeeded", "error": None}


# --- urls.stream -------------------------------------------------------------------------

STREAM_EVENTS = """
def events(stream):
    found = []
    try:
        for event in stream:
            found.append([event.event.value, str(event) if event.event.value == "output" else event.data])
    except Exception as error:  # the client raises an error event, and a stream it cannot read
        found.append(["raised", type(error).__name__, str(error)])
    return found
"""


async def test_a_prediction_streams_its_logs_output_and_end_from_any_replica(online, second, accounts, http):
    answer = await asyncio.to_thread(
        run_client,
        second,  # created on one replica, streamed from another: the stream follows the stored prediction
        accounts[0],
        STREAM_EVENTS + f"""
import json, time, replicate
created = replicate.models.predictions.create(model="nari-labs/dia", input={QUICK!r}, stream=True)
urls = created.urls
elsewhere = replicate.Client(base_url={online.http_url!r})
live = events(elsewhere.predictions.get(created.id).stream())
created.reload()
started = time.monotonic()
again = events(created.stream())  # ended: at once
again_seconds = time.monotonic() - started
print(json.dumps({{"urls": urls, "status": created.status, "output": created.output,
                   "live": live, "again": again, "again_seconds": again_seconds, "id": created.id}}))
""",
    )
    assert answer["urls"]["stream"] == f"{second.http_url}/v1/predictions/{answer['id']}/stream"
    assert answer["status"] == "succeeded"
    live = answer["live"]
    assert [kind for kind, _ in live[-2:]] == ["output", "done"], live
    # The same output as the prediction's, on the replica streaming it.
    assert live[-2][1] == answer["output"].replace(second.http_url, online.http_url) and live[-1][1] == "{}"
    logs = "\n".join(data for kind, data in live if kind == "logs")
    assert logs.startswith("queued") and "generating on provider" in logs and "generated" in logs
    assert {kind for kind, _ in live} == {"logs", "output", "done"}
    assert answer["again"][-2:] == [["output", answer["output"]], ["done", "{}"]] and answer["again_seconds"] < 2
    audio = await http.get(live[-2][1].removeprefix(online.http_url), headers=accounts[0].headers)
    assert audio.status == 200 and is_wav(await audio.read()) > 1


async def test_a_failed_or_canceled_prediction_streams_its_end(online, accounts):
    async with extra_gateway(online, GATEWAY_SYNTH_TIMEOUT_SECONDS="1") as hasty:
        answer = await asyncio.to_thread(
            run_client,
            hasty,
            accounts[0],
            STREAM_EVENTS + """
import json, replicate
failing = replicate.models.predictions.create(
    model="nari-labs/dia", input={"text": "[S1] A long one.", "max_new_tokens": 4096})
failed = events(failing.stream())
failing.reload()
canceled = replicate.models.predictions.create(
    model="nari-labs/dia", input={"text": "[S1] A long one.", "max_new_tokens": 4096})
replicate.predictions.cancel(canceled.id)
print(json.dumps({"failed": failed, "error": failing.error, "status": failing.status,
                  "canceled": events(canceled.stream())}))
""",
        )
    assert answer["status"] == "failed"
    assert answer["failed"][-1] == ["raised", "RuntimeError", answer["error"]], answer["failed"]
    assert answer["canceled"][-1] == ["done", '{"reason": "canceled"}'], answer["canceled"]


async def test_another_accounts_prediction_does_not_stream(online, accounts, http):
    answer = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        f"""
import json, replicate
created = replicate.models.predictions.create(model="nari-labs/dia", input={QUICK!r})
replicate.predictions.cancel(created.id)
print(json.dumps({{"id": created.id, "stream": created.urls["stream"]}}))
""",
    )
    path = answer["stream"].removeprefix(online.http_url)
    await assert_error(await http.get(path, headers=accounts[1].headers), 404, "not_found")
    await assert_error(await http.get("/v1/predictions/gen_nonesuch/stream", headers=accounts[0].headers), 404, "not_found")
    await assert_error(await http.get(path), 401, "unauthorized")
    own = await http.get(path, headers=accounts[0].headers)
    assert own.status == 200 and own.content_type == "text/event-stream"
    assert (await own.text()).endswith('event: done\nid: 2\ndata: {"reason": "canceled"}\n\n')
    # The predictor's client, with another account's key, gets no event stream.
    other = await asyncio.to_thread(
        run_client,
        online,
        accounts[0],
        STREAM_EVENTS + f"""
import json, replicate
prediction = replicate.predictions.get({answer['id']!r})
prediction._client = replicate.Client(api_token={accounts[1].key!r})
print(json.dumps(events(prediction.stream())))
""",
    )
    assert other == [["raised", "ValueError", "Expected response Content-Type to be 'text/event-stream', got 'application/json'"]]
