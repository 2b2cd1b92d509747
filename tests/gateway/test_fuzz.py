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
import sys
import uuid

import aiohttp
import pytest

from services.gateway import accounts as gateway_accounts
from tests.conftest import ROOT, Database, RunningMesh, mesh_ports_env
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
async def fuzzed_mesh(database):
    own_database = Database()
    own_database.admin_url = database.admin_url  # a new database on the session's server
    await own_database.create()
    env = mesh_tools.mesh_environment(own_database.url)
    env.update(mesh_ports_env())
    env.update(DIA_MODEL="tiny-random", LOG_FORMAT="json", LOG_LEVEL="WARNING", SYNTH_MAX_NEW_TOKENS=str(MAX_NEW_TOKENS))
    running = RunningMesh(mesh_tools.existing_services(), env)
    try:
        await running.start(timeout=180)
        pool = await gateway_accounts.open_pool(own_database.url)
        try:
            key = (await gateway_accounts.create_key(pool, f"fuzz-{uuid.uuid4().hex[:8]}")).key
        finally:
            await pool.close()
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
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{http_url}/v1/predictions", json=body, headers=headers) as response:
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
