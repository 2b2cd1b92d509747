"""The URLs that fetch a generation's audio without an API key: share URLs and signed URLs.

A share URL (``share_url``) holds the generation's share token, a secret that
stays while the generation is unlisted or public.

A signed URL (``audio_url``, a prediction's ``output``) is a capability, like
the hosted predictor's delivery URLs:
``/v1/signed/generations/{id}/audio?expires=<unix time>&signature=<s>``,
where ``s`` is the unpadded base64url HMAC-SHA256, with the gateway's key, of
the id, ``expires`` and the generation's URL epoch. It works until the time
``expires`` (between one and two GATEWAY_SIGNED_URL_SECONDS after it was
handed out: the end of the next window of that length, so that the URLs
handed out within one window are the same) for anyone who has it. Raising the epoch (making the generation private) or deleting the
generation makes every URL handed out fail its check, as a made-up one does.

The key is made once, by the first gateway to start, and kept in the store
(store/url_signing_key.py), so every replica checks what another signed with
nothing to configure; whoever could read it there could read the audio there
too. Deleting that row (and restarting the gateways) revokes every URL.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
import time
from typing import Callable
from urllib.parse import urlencode

import grpc

from runtime.errors import ApiError, not_found
from services.gateway.store.url_signing_key import UrlSigningKeyTable

KEY_BYTES = 32


def url_expired(expires: int) -> ApiError:
    when = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).isoformat()
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        "URL_EXPIRED",
        f"this signed URL expired at {when}; get the generation (or the prediction) again for a fresh one",
    )


class AudioUrls:
    """Makes and checks the keyless audio URLs of generations (see the module's docstring)."""

    def __init__(
        self,
        key_table: UrlSigningKeyTable,
        public_url: Callable[[], str],
        seconds: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key_table = key_table
        self.public_url = public_url  # callables: the settings' values
        self.seconds = seconds
        self.clock = clock
        self._key: bytes | None = None

    async def start(self) -> None:
        """Read the key from the store (made there by the first gateway that asks)."""
        self._key = await self.key_table.key(secrets.token_bytes(KEY_BYTES))

    def base(self) -> str:
        return self.public_url().rstrip("/")

    def share_url(self, share_token: str) -> str:
        return f"{self.base()}/v1/shared/generations/{share_token}/audio"

    def audio_url(self, generation_id: str, epoch: int) -> str:
        """A signed URL of the generation's audio, working for at least GATEWAY_SIGNED_URL_SECONDS from
        now and at most twice that: its expiry is the end of the next window of that length, so every
        read within one window hands out the same URL (a client may keep or cache it)."""
        window = self.seconds()
        expires = (int(self.clock()) // window + 2) * window
        query = urlencode({"expires": expires, "signature": self.signature(generation_id, expires, epoch)})
        return f"{self.base()}/v1/signed/generations/{generation_id}/audio?{query}"

    def signature(self, generation_id: str, expires: int, epoch: int) -> str:
        assert self._key is not None, "AudioUrls.start() has not read the key"
        signed = f"v1\n{generation_id}\n{expires}\n{epoch}".encode()
        return base64.urlsafe_b64encode(hmac.new(self._key, signed, hashlib.sha256).digest()).decode().rstrip("=")

    def check(self, generation_id: str, expires: int, signature: str, epoch: int) -> None:
        """NOT_FOUND unless `signature` is the one made for this id, expiry and epoch (an altered or
        revoked URL looks made up); URL_EXPIRED from the time `expires` on."""
        if not hmac.compare_digest(signature.encode(), self.signature(generation_id, expires, epoch).encode()):
            raise not_found("no generation audio at this URL")
        if self.clock() >= expires:
            raise url_expired(expires)
