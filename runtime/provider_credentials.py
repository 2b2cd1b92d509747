"""The credential a synth provider presents to the gateway's provider registry.

Registering a provider routes users' scripts and voice samples to it, and
deregistering one takes it out of service, so the registry answers only
callers that prove who they are. Each provider's credential is its own:
``HMAC-SHA256(PROVIDER_SECRET, provider_id)``, sent as ``x-provider-token``
metadata. The gateway, which knows the secret, recomputes it for the
provider id in the request and compares in constant time, so a credential
speaks for one provider id only.

A provider either knows the shared secret and derives its credential (the
default: in Kubernetes every synth pod gets it from a Secret, and then every
provider is trusted as much as any other), or is given only its own
credential (SYNTH_PROVIDER_TOKEN, printed by ``python -m tools.provider_token
<id>``) with a fixed SYNTH_PROVIDER_ID: then it cannot register, update or
remove any registration but its own.
"""

from __future__ import annotations

import hashlib
import hmac

from runtime import config

# The metadata that carries the credential (not "authorization": that is the API key's).
TOKEN_METADATA = "x-provider-token"
# Keeps these tokens apart from anything else ever derived from the same secret.
_CONTEXT = b"voicemesh provider registry v1\x00"
MIN_SECRET_CHARS = 16


def _secret(raw: str) -> str:
    if len(raw) < MIN_SECRET_CHARS:
        raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`)")
    return raw


PROVIDER_SECRET = config.setting(
    "PROVIDER_SECRET",
    "",
    "shared secret of the provider registry (at least 16 characters): the gateway accepts a provider's "
    "heartbeat or deregistration only with HMAC-SHA256(secret, provider_id) as its credential; a synth "
    "provider without SYNTH_PROVIDER_TOKEN derives its own from it. Unset on the gateway, no provider can "
    "register; `make run` makes one in MESH_PROVIDER_SECRET_FILE",
    _secret,
    secret=True,
)


def token(secret: str, provider_id: str) -> str:
    """The credential of one provider id, as hex."""
    return hmac.new(secret.encode(), _CONTEXT + provider_id.encode(), hashlib.sha256).hexdigest()


def is_valid(secret: str, provider_id: str, presented: str) -> bool:
    """Whether `presented` is the credential of `provider_id` (always False without a secret)."""
    if not secret or not presented:
        return False
    return hmac.compare_digest(presented.encode(), token(secret, provider_id).encode())
