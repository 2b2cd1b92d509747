"""Fuzzing: schemathesis against a running mesh's /openapi.json, every operation, with a key.

It fails on any 5xx, any status, content type, header or body the document
does not list for the operation, and any traceback in a body
(fuzz_checks.py). Streamed answers ("stream": true, a stream_format) are
fuzzed too: their media types are in the document.

The mesh is one of its own (every service as a process, a database of its
own), so that what the fuzzer creates, changes and deletes touches no other
test, and so that generations stay cheap: its synth refuses more than
MAX_NEW_TOKENS frames (400 from the provider, as one that cannot generate
that much answers; the tiny random model generates that many in a second or
so on a CPU, several on a busy one), and the operations that generate
get at most GENERATION_EXAMPLES cases per phase, the others FUZZ_EXAMPLES.

`make test` runs a short round (5 cases per operation and phase, besides
schemathesis's coverage cases: about 600 requests); `make fuzz` a long one
(FUZZ_EXAMPLES=1000: over 10,000 requests, a new seed each time), printing
its progress and summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid

import aiohttp
import pytest
import requests
import schemathesis
from schemathesis import checks as general_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks as openapi_checks

from services.gateway import accounts as gateway_accounts
from services.gateway.store import Store
from tests.conftest import ROOT, Database, RunningMesh, mesh_ports_env
from tests.gateway import fuzz_checks
from tools import mesh as mesh_tools

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
GENERATION_EXAMPLES = 50
GENERATING = (
    r"^(GenerationService_CreateGeneration|SpeechService_CreateSpeech"
    r"|PredictionService_CreatePrediction|PredictionService_CreateModelPrediction)$"
)
# A fixed seed in `make test`, so a failure there is the same on the next run; `make fuzz` draws one.
SEED = os.environ.get("FUZZ_SEED", "20261201")
WORKERS = os.environ.get("FUZZ_WORKERS", "1")
ECHO = bool(os.environ.get("FUZZ_ECHO"))
MAX_NEW_TOKENS = 256
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "no_traceback",
]


@pytest.fixture(scope="module")
async def fuzzed_mesh(database, object_server):
    own_database = Database()
    own_database.admin_url = database.admin_url  # a new database on the session's server
    await own_database.create()
    env = mesh_tools.mesh_environment(own_database.url, object_store=object_server.settings.environment())
    env.update(mesh_ports_env())
    env.update(DIA_MODEL="tiny-random", LOG_FORMAT="json", LOG_LEVEL="WARNING", SYNTH_MAX_NEW_TOKENS=str(MAX_NEW_TOKENS))
    running = RunningMesh(mesh_tools.existing_services(), env)
    try:
        await running.start(timeout=180)
        store = await Store.open(own_database.url)
        try:
            key = (await gateway_accounts.create_key(store.accounts, f"fuzz-{uuid.uuid4().hex[:8]}")).key
        finally:
            await store.close()
        yield running, key, await ended_prediction(running.http_url, key)
    finally:
        await running.stop()
        await own_database.drop()


async def ended_prediction(http_url: str, key: str) -> str:
    """The id of a prediction that has ended (failed: this mesh's synth refuses the 500 frames the
    predictor's input asks for at least), whose event stream the fuzzer then reads: random ids only
    reach its 404, and no link in the document leads from a created prediction to its stream."""
    body = {"version": "nari-labs/dia", "input": {"text": "[S1] Hello there.", "max_new_tokens": 500}}
    headers = {"Authorization": f"Bearer {key}", "Prefer": "wait=60"}
    async with aiohttp.ClientSession() as http, http.post(f"{http_url}/v1/predictions", json=body, headers=headers) as response:
        prediction = await response.json()
    assert response.status in (200, 201) and prediction["status"] in ("succeeded", "failed"), prediction
    return prediction["id"]


@pytest.mark.slow
@pytest.mark.timeout(int(os.environ.get("FUZZ_TIMEOUT_SECONDS", "600")))
async def test_no_input_breaks_the_api_or_its_document(fuzzed_mesh, tmp_path):
    running, key, prediction_id = fuzzed_mesh
    report = tmp_path / "report.json"
    settings = tmp_path / "schemathesis.toml"
    settings.write_text(
        f"""[generation]
max-examples = {EXAMPLES}
database = "none"

[[operations]]
include-operation-id-regex = "{GENERATING}"
generation.max-examples = {min(EXAMPLES, GENERATION_EXAMPLES)}

# A prediction that exists, so that its text/event-stream answer is checked against the document, event by event.
[[operations]]
include-operation-id = "PredictionService_StreamPredictionEvents"
parameters = {{ "path.id" = "{prediction_id}" }}

# Revoking a key is fuzzed with an id that is nobody's: the stateful phase would otherwise revoke the
# fuzzer's own key (GET /v1/keys lists it), after which everything is 401. test_accounts.py revokes keys.
[[operations]]
include-operation-id = "KeyService_RevokeKey"
parameters = {{ "path.id" = "key_0000000000000000" }}
"""
    )
    command = [
        str(ROOT / ".venv" / "bin" / "st"),
        "--config-file",
        str(settings),
        "run",
        f"{running.http_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        ",".join(CHECKS),
        "--workers",
        WORKERS,
        "--request-timeout",
        "60",  # a hang is a failure too, but a generation on a busy machine takes seconds
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    if SEED:
        command += ["--seed", SEED]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.gateway.fuzz_checks", "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    lines = []
    assert process.stdout is not None
    async for line in process.stdout:  # as it goes, with FUZZ_ECHO (make fuzz): a long run shows its progress
        lines.append(line.decode(errors="replace"))
        if ECHO:
            print(lines[-1], end="", file=sys.stderr)
    await process.wait()
    output = "".join(lines)
    result = json.loads(report.read_text()) if report.exists() else {}
    cases = result.get("test_cases", {})
    summary = (
        f"fuzzing: {cases.get('generated', '?')} requests over {result.get('operations', {}).get('tested', '?')} "
        f"operations in {result.get('running_time', 0):.0f} s (seed {result.get('seed')}): "
        f"{cases.get('unique_failures', '?')} failures, {cases.get('errored', '?')} errors"
    )
    print(summary, file=sys.stderr)
    assert process.returncode == 0, f"{summary}\n{output[-20000:]}"
    assert result["operations"]["tested"] == result["operations"]["selected"] >= 12, result["operations"]
    # The fuzzer's key still works: had it revoked it (DELETE /v1/keys/{id} of an id GET /v1/keys lists), the
    # rest of the run would have been 401s, which the document allows, and fuzzed nothing.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.http_url}/v1/me", headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == 200, await response.text()


@pytest.mark.slow
async def test_hand_made_hostile_requests_break_nothing(fuzzed_mesh):
    """What broke the API from outside, made by hand for every operation that takes a body (fuzz_checks.
    hand_made: lone surrogates as keys, non-finite numbers and deep nesting in free-form JSON and form
    fields, fields sent as file parts, bodies not in their Content-Encoding), held to the fuzzer's checks."""
    running, key, _ = fuzzed_mesh
    async with aiohttp.ClientSession() as http, http.get(f"{running.http_url}/openapi.json") as response:
        document = await response.json()
    schema = schemathesis.openapi.from_dict(document)
    checks = [getattr(general_checks, name, None) or getattr(openapi_checks, name) for name in CHECKS[:-1]]
    checks.append(fuzz_checks.no_traceback)
    cases = fuzz_checks.hand_made(document)
    assert {(case.method, case.path) for case in cases} >= {
        ("POST", "/v1/voice/generations"), ("POST", "/v1/predictions"), ("POST", "/v1/audio/speech"),
        ("PATCH", "/v1/voice/generations/{id}"), ("PATCH", "/v1/voice/samples/{id}"),
        ("POST", "/v1/files"), ("POST", "/v1/voice/samples"),
    }  # fmt: skip
    failures = []
    mark = {name: len(lines) for name, lines in running.log_lines.items()}
    with requests.Session() as session:
        for case in cases:
            headers = {"Authorization": f"Bearer {key}", **case.headers}
            try:
                response = await asyncio.to_thread(
                    session.request, case.method, running.http_url + case.url_path, data=case.body, headers=headers, timeout=60
                )
            except requests.ConnectionError as error:  # no answer at all
                failures.append(f"{case.method} {case.path}, {case.label}: {error}")
                continue
            operation = schema[case.path][case.method]
            try:
                operation.Case(path_parameters={name: "1" for name in re.findall(r"\{([^}]+)\}", case.path)}).validate_response(
                    response, checks=checks
                )
            except (AssertionError, FailureGroup) as failure:  # every case's failure is reported, not the first alone
                failures.append(f"{case.method} {case.path}, {case.label}: {response.status_code} {str(failure)[:500]}")
    print(f"hand-made: {len(cases)} requests, {len(failures)} failures", file=sys.stderr)
    assert not failures, "\n".join(failures)
    logged = [line for name, lines in running.log_lines.items() for line in lines[mark[name] :] if "Traceback" in line]
    assert not logged, logged[:3]  # a client's mistake is no error of the service's
