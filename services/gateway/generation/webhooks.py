"""Prediction webhooks, signed the way the hosted predictor signs them.

A prediction created with ``webhook`` (an http(s) URL starting with one of
GATEWAY_WEBHOOK_ALLOW_LIST's prefixes: the gateway posts to nothing else)
gets the prediction, as GET /v1/predictions/{id} answers it, POSTed there
when it starts and when it has ended; ``webhook_events_filter`` ("start",
"output", "logs", "completed"; all when empty) picks which: "start" is the
first, the last counts as "output", "logs" and "completed".

Each delivery is signed with the account's secret (GET
/v1/webhooks/default/secret, "whsec_" + base64 of 32 random bytes) as the
Standard Webhooks scheme does, which ``replicate.webhooks.validate`` checks:
headers ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` = "v1," + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
A delivery that fails (no connection, a timeout, a non-2xx answer) is tried
again, GATEWAY_WEBHOOK_ATTEMPTS times in all, the pauses doubling from 1 s;
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Callable

import aiohttp
import asyncpg
import yarl
from google.protobuf import json_format

from runtime import config
from runtime.database import connection
from runtime.errors import invalid_parameter
from services.gateway.config import WEBHOOK_ALLOW_LIST, WEBHOOK_ATTEMPTS
from voice.gateway.v1 import predictions_pb2, predictions_pb2_grpc

log = logging.getLogger("gateway.webhooks")

EVENTS = ("start", "output", "logs", "completed")
# The events each delivery stands for.
DELIVERY_EVENTS = {"start": {"start"}, "completed": {"output", "logs", "completed"}}
FIRST_PAUSE_SECONDS = 1.0


def events_filter(requested: list[str]) -> list[str]:
    unknown = [event for event in requested if event not in EVENTS]
    if unknown:
        raise invalid_parameter(
            "webhook_events_filter", f"unknown webhook event {unknown[0][:40]!r}: use {', '.join(EVENTS)}"
        )
    return sorted(set(requested), key=EVENTS.index) or list(EVENTS)


def allow_list() -> list[str]:
    return [prefix.strip() for prefix in WEBHOOK_ALLOW_LIST.value.split(",") if prefix.strip()]


def is_allowed(url: str, prefixes: list[str]) -> bool:
    """Whether an http(s) URL is under one of the operator's prefixes, compared as URLs, not as text:
    the same scheme, host and port, no user part, and a path under the prefix's once dot segments are
    resolved (so "https://ok.example.com.evil.net/" or ".../voices/../admin" do not slip through)."""
    try:
        wanted = yarl.URL(url)
        if wanted.scheme not in ("http", "https") or not wanted.host or wanted.user or wanted.password:
            return False
        for prefix in prefixes:
            allowed = yarl.URL(prefix)
            base = allowed.path if allowed.path.endswith("/") else allowed.path + "/"
            if (
                (wanted.scheme, wanted.host, wanted.port) == (allowed.scheme, allowed.host, allowed.port)
                and (wanted.path == allowed.path or wanted.path.startswith(base))
            ):
                return True
    except ValueError:
        return False
    return False


def check_target(url: str) -> None:
    if not is_allowed(url, allow_list()):
        raise invalid_parameter(
            "webhook",
            "webhook must be an http(s) URL this gateway may post to (a prefix of GATEWAY_WEBHOOK_ALLOW_LIST)",
        )


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def account_secret(pool: asyncpg.Pool, account_id: int) -> str:
    """The account's signing secret, made on first use."""
    made = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    async with connection(pool) as db:
        return await db.fetchval(
            """INSERT INTO webhook_secrets (account_id, secret) VALUES ($1, $2)
               ON CONFLICT (account_id) DO UPDATE SET secret = webhook_secrets.secret
               RETURNING secret""",
            account_id,
            made,
        )


class Sender:
    """The deliveries of one prediction."""

    def __init__(self, url: str, events: list[str], account_id: int, pool: Callable[[], asyncpg.Pool]) -> None:
        self.url = url
        self.events = set(events)
        self.account_id = account_id
        self.pool = pool

    @property
    def active(self) -> bool:
        return bool(self.url)

    async def send(self, delivery: str, prediction: predictions_pb2.Prediction) -> bool:
        """POST the prediction if the filter wants this delivery; True once delivered (or not wanted)."""
        if not self.url or not (DELIVERY_EVENTS[delivery] & self.events):
            return True
        body = json.dumps(
            json_format.MessageToDict(prediction, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        ).encode()
        secret = await account_secret(self.pool(), self.account_id)
        webhook_id = "msg_" + secrets.token_hex(12)
        pause = FIRST_PAUSE_SECONDS
        timeout = aiohttp.ClientTimeout(total=config.UPSTREAM_TIMEOUT_SECONDS.value)
        for attempt in range(1, WEBHOOK_ATTEMPTS.value + 1):
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature(secret, webhook_id, timestamp, body),
            }
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.post(self.url, data=body, headers=headers, allow_redirects=False) as answer:
                        if 200 <= answer.status < 300:
                            return True
                        problem = f"HTTP {answer.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                problem = type(error).__name__
            log.info(
                "webhook delivery failed",
                extra={"generation": prediction.id, "attempt": attempt, "problem": problem},
            )
            if attempt < WEBHOOK_ATTEMPTS.value:
                await asyncio.sleep(pause)
                pause *= 2
        log.warning("webhook not delivered", extra={"generation": prediction.id, "delivery": delivery})
        return False


class Webhooks(predictions_pb2_grpc.WebhookServiceServicer):
    def __init__(self, generations) -> None:
        self.generations = generations

    async def GetDefaultWebhookSecret(self, request, context):
        account_id = await self.generations.accounts.caller(context)
        return predictions_pb2.GetDefaultWebhookSecretResponse(key=await account_secret(self.generations.pool(), account_id))
