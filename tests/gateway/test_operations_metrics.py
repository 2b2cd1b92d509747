"""The metrics an operator watches, read from the running mesh as Prometheus
scrapes them (each service's metrics port): every metric that deploy/k8s's
dashboard, alert rules and autoscalers read is exposed by some service, and
the new ones move with what users do (a generation adds audio seconds, a
request without a key counts as an unauthorized error)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime import database
from services.synth import config as synth_config
from tests.deploy import monitoring
from tests.gateway.conftest import wait_for_models

GENERATIONS = "/v1/voice/generations"
# Suffixes under which prometheus_client exposes a metric family's samples, by type.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


async def scrape(mesh, service: str) -> list:
    port = mesh.env[f"{service.upper()}_METRICS_PORT"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            return list(text_string_to_metric_families(await response.text()))


def exposed_names(families) -> set[str]:
    """Every series name a scrape can hold: declared families with their suffixes, and the samples seen."""
    names = set()
    for family in families:
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def value(families, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_every_metric_the_deployment_reads_is_exposed_by_the_mesh(mesh):
    exposed = set()
    for service in mesh.services:
        exposed |= exposed_names(await scrape(mesh, service))
    used = monitoring.metrics_used()
    # The queries name the metrics the operator needs (a check that the reading of PromQL finds them).
    assert {"gateway_providers_online", "stt_queue_depth", "synth_rows_active", "database_up"} <= set(used)
    missing = {name: sorted(where) for name, where in used.items() if name not in exposed}
    assert not missing, f"read by deploy/k8s but exposed by no service: {missing}"


async def test_a_generation_moves_the_generation_metrics(mesh, http, accounts):
    alice, _ = accounts
    await wait_for_models(http, alice)
    before = await scrape(mesh, "gateway")
    response = await http.post(
        GENERATIONS, json={"input": "[S1] Metrics, please.", "max_new_tokens": 256}, headers=alice.headers
    )
    assert response.status == 200, await response.text()
    await response.read()
    unauthorized = await http.get(GENERATIONS)
    assert unauthorized.status == 401
    after = await scrape(mesh, "gateway")

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    audio_seconds = grew("gateway_generated_audio_seconds_total")
    assert audio_seconds > 0
    assert grew("gateway_generation_real_time_factor_count") == 1
    # The factor is provider seconds per audio second: positive, and the sum grows by one observation.
    assert grew("gateway_generation_real_time_factor_sum") > 0
    assert grew("gateway_generation_seconds_count", outcome="succeeded") == 1
    assert grew("http_errors_total", route=GENERATIONS, status="401", type="unauthorized") == 1
    assert value(after, "gateway_providers_online") >= 1
    # Only the scrape is in flight, and it does not go through the HTTP front.
    assert value(after, "http_requests_in_flight") == 0


async def test_a_streamed_generation_moves_them_too_and_a_caller_gone_counts_as_canceled(mesh, http, accounts):
    alice, _ = accounts
    await wait_for_models(http, alice)
    before = await scrape(mesh, "gateway")
    body = {"input": "[S1] Streamed metrics.", "max_new_tokens": 256, "stream": True}
    async with http.post(GENERATIONS, json=body, headers=alice.headers) as response:
        assert response.status == 200, await response.text()
        generation_id = response.headers["X-Generation-Id"]
        await response.read()
    stored = await (await http.get(f"{GENERATIONS}/{generation_id}", headers=alice.headers)).json()
    after = await scrape(mesh, "gateway")

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Counted once, as a whole: the audio the history keeps.
    assert grew("gateway_generated_audio_seconds_total") == pytest.approx(stored["audio_duration_seconds"])
    assert grew("gateway_generation_real_time_factor_count") == 1
    assert grew("gateway_generation_seconds_count", outcome="succeeded") == 1

    response = await http.post(GENERATIONS, json={**body, "max_new_tokens": 3072}, headers=alice.headers)
    await response.content.readany()
    response.close()  # hangs up mid-stream
    deadline = asyncio.get_running_loop().time() + 60
    while value(await scrape(mesh, "gateway"), "gateway_generation_seconds_count", outcome="canceled") == value(
        after, "gateway_generation_seconds_count", outcome="canceled"
    ):
        assert asyncio.get_running_loop().time() < deadline, "a caller gone never counted as canceled"
        await asyncio.sleep(0.1)
    final = await scrape(mesh, "gateway")
    assert value(final, "gateway_generation_seconds_count", outcome="failed") == value(
        after, "gateway_generation_seconds_count", outcome="failed"
    )


async def test_readiness_database_and_queues_are_reported(mesh):
    for service in ("gateway", "library"):
        families = await scrape(mesh, service)
        assert value(families, "database_up") == 1, service
        assert value(families, "database_pool_max_connections") == database.DATABASE_POOL_SIZE.default
        assert value(families, "database_pool_connections", state="idle") >= 1
    library = await scrape(mesh, "library")
    assert value(library, "grpc_health_serving", grpc_service="voice.library.v1.LibraryService") == 1
    synth = await scrape(mesh, "synth")
    batch = int(mesh.env.get("SYNTH_MAX_BATCH_SIZE", synth_config.SYNTH_MAX_BATCH_SIZE.default))
    queue = int(mesh.env.get("SYNTH_MAX_QUEUE", synth_config.SYNTH_MAX_QUEUE.default))
    assert value(synth, "synth_capacity") == batch + queue
    assert value(synth, "synth_rows_active") == 0  # nothing generating between tests
    stt = await scrape(mesh, "stt")
    assert value(stt, "stt_queue_depth") == 0 and value(stt, "stt_transcriptions_running") == 0
    assert {"stt_queue_depth", "stt_transcriptions_running"} <= {f.name for f in stt}


@pytest.mark.parametrize("service", ["transcode", "stt", "synth"])
async def test_services_without_a_database_report_no_pool(mesh, service):
    """database_up only where a pool exists: an alert on it never fires for a service without one."""
    families = await scrape(mesh, service)
    assert not [s for f in families for s in f.samples if s.name == "database_up"]
