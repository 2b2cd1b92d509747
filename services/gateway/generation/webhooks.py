"""Webhooks: signed deliveries of a JSON body to a URL the operator allows.

A webhook target is an http(s) URL starting with one of
GATEWAY_WEBHOOK_ALLOW_LIST's prefixes (compared as URLs: the gateway posts
to nothing else). Each delivery is signed with the account's secret
("whsec_" + base64 of 32 random bytes, made on first use) as the Standard
Webhooks scheme does, which ``replicate.webhooks.validate`` checks: headers
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` = "v1," + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
A delivery that fails (no connection, a timeout, a non-2xx answer) is tried
again, GATEWAY_WEBHOOK_ATTEMPTS times in all, the pauses doubling from 1 s;
redirects are not followed. What is delivered when is the dialect's
(dialects/predictor/webhooks.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time

import aiohttp
import yarl

from runtime import config, tracing
from runtime.errors import invalid_parameter
from services.gateway.config import WEBHOOK_ALLOW_LIST, WEBHOOK_ATTEMPTS
from services.gateway.store.webhooks import WebhooksTable

log = logging.getLogger("gateway.webhooks")

FIRST_PAUSE_SECONDS = 1.0


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


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Webhooks:
    """Signed deliveries (see the module's docstring)."""

    def __init__(self, table: WebhooksTable) -> None:
        self.table = table

    async def secret(self, account_id: int) -> str:
        """The account's signing secret, made on first use."""
        return await self.table.secret(account_id, new_secret())

    async def deliver(self, url: str, account_id: int, body: bytes, about: str) -> bool:
        """POST `body`, signed, trying again as the module's docstring says; True once delivered.
        `about` names what it is about in the log (a generation's id). Its span (tracing on) is in the
        trace of the request behind it, never with the URL: it may hold the receiver's own secret."""
        with tracing.span("gateway.webhook") as span:
            delivered = await self._deliver(url, account_id, body, about, span)
            if not delivered:
                tracing.failed(span, "not_delivered")
            return delivered

    async def _deliver(self, url: str, account_id: int, body: bytes, about: str, span) -> bool:
        secret = await self.secret(account_id)
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
                    async with session.post(url, data=body, headers=headers, allow_redirects=False) as answer:
                        if 200 <= answer.status < 300:
                            return True
                        problem = f"HTTP {answer.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                problem = type(error).__name__
            log.info("webhook delivery failed", extra={"generation": about, "attempt": attempt, "problem": problem})
            if span is not None:
                span.add_event("delivery failed", {"attempt": attempt, "problem": problem})
            if attempt < WEBHOOK_ATTEMPTS.value:
                await asyncio.sleep(pause)
                pause *= 2
        log.warning("webhook not delivered", extra={"generation": about})
        return False
