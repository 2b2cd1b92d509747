"""The gateway's audio in the object store: generated WAVs and uploaded files (runtime/objects.py).

PostgreSQL keeps what they are and their keys (store/); the bytes are objects
of one bucket, under ``generations/<account>/`` and ``files/<account>/``:

* **Storing** (:meth:`AudioStorage.keeping`): the object is stored first, its
  row committed after; if the row is not committed (the database failed, the
  generation was canceled or deleted meanwhile, the caller went away), the
  object is deleted again at once. An object left by a gateway that died
  between the two is found by the sweep once older than
  S3_ORPHAN_GRACE_SECONDS. A store that is down fails the request with 503
  ``storage_unavailable``, and nothing is acknowledged.
* **Deleting**: the statement that deletes rows (or expires a generation's
  audio) hands their objects over to ``object_deletions``; they are deleted
  from the store at once, or, with the store down then, by the sweep.
* **Serving** (:meth:`AudioStorage.download`): as it is read from the store, a
  window at a time (runtime/downloads.py), or, with GATEWAY_AUDIO_REDIRECTS, a
  generation's audio by a 307 to a presigned URL of the store.
* **Retention**: with GATEWAY_AUDIO_RETENTION_SECONDS set, the sweep deletes
  generated audio older than that; the history keeps the record
  (``audio_expired``) and the audio answers 410 ``audio_expired``.
* **Erasure** (:meth:`AudioStorage.erase_account`): an account's voice data,
  everywhere it lives: its samples (the library's, rows and objects), its
  generations and files (rows and objects).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from google.api import httpbody_pb2

from runtime import downloads, objects
from runtime.downloads import Stored
from runtime.errors import ApiError
from runtime.objects import ObjectStore
from services.gateway.generation.library import Library
from services.gateway.store import Store

log = logging.getLogger("gateway.storage")

GENERATIONS_PREFIX = "generations/"
FILES_PREFIX = "files/"
PREFIXES = (GENERATIONS_PREFIX, FILES_PREFIX)


def generation_key(account_id: int, generation_id: str) -> str:
    """A new key of a generation's audio: under its account, never used before (an id of the caller's
    choosing may come again once its generation is deleted)."""
    return f"{GENERATIONS_PREFIX}{account_id}/{generation_id}-{secrets.token_hex(4)}.wav"


def file_key(account_id: int, file_id: str) -> str:
    return f"{FILES_PREFIX}{account_id}/{file_id}"


@dataclass(frozen=True)
class Erased:
    """What an account's erasure deleted."""

    samples: int
    generations: int
    files: int
    objects: int


class AudioStorage:
    def __init__(
        self,
        objects_: ObjectStore,
        store: Store,
        redirects: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.objects = objects_
        self.store = store
        self.redirects = redirects  # a callable: the setting's value
        self.clock = clock

    def media_origins(self) -> tuple[str, ...]:
        """Where browsers fetch audio besides the gateway: the store's public origin, with redirects."""
        if not self.redirects():
            return ()
        settings = self.objects.settings
        endpoint = settings.public_endpoint_url or settings.endpoint_url
        if not endpoint:  # AWS S3 of the region, by its virtual-hosted name
            return (f"https://{settings.bucket}.s3.{settings.region}.amazonaws.com", f"https://s3.{settings.region}.amazonaws.com")
        parts = urllib.parse.urlsplit(endpoint)
        return (f"{parts.scheme}://{parts.netloc}",)

    async def is_reachable(self) -> bool:
        return await self.objects.is_reachable()

    async def close(self) -> None:
        await self.objects.close()

    # --- storing -------------------------------------------------------------------

    def keeping(self, key: str):
        """Around storing `key` and committing the row that names it (ObjectStore.keeping)."""
        return self.objects.keeping([key])

    async def let_go(self, keys: list[str]) -> None:
        """Delete the objects of rows that are gone (handed to object_deletions): now, or, with the store
        down, at the sweep."""
        await self.objects.let_go(keys, self.store.object_deletions.done)

    # --- reading -------------------------------------------------------------------

    async def read(self, stored: Stored) -> bytes:
        """The whole of it (an input file read as a voice to clone)."""
        if stored.key is None:
            return stored.legacy or b""
        return await self.objects.get(stored.key)

    def download(
        self, stored: Stored, context, redirect: bool = False, until: float | None = None
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """A download's answers (runtime/downloads.py): with `redirect` and GATEWAY_AUDIO_REDIRECTS, a 307
        to a presigned URL of the store, valid S3_PRESIGNED_URL_SECONDS and never past `until` (a signed
        URL's expiry, unix time); else the bytes as they are read."""
        if redirect and self.redirects() and stored.key is not None:
            return self._redirect(stored.key, context, until)
        return downloads.send(stored, self.objects, context)

    async def _redirect(self, key: str, context, until: float | None) -> AsyncIterator[httpbody_pb2.HttpBody]:
        seconds = self.objects.settings.presigned_url_seconds
        if until is not None:
            seconds = max(1, min(seconds, int(until - self.clock())))
        url = await self.objects.presigned_url(key, seconds)
        async for answer in downloads.redirect(url, context):
            yield answer

    # --- sweeping ------------------------------------------------------------------

    async def sweep(self, grace_seconds: float, retention_seconds: float) -> dict[str, int]:
        """One round: the audio past its retention (0: kept), the objects of deleted rows still waiting,
        and the objects older than `grace_seconds` that no row names; how many of each."""
        expired = 0
        if retention_seconds > 0:
            while keys := await self.store.generations.expire_audio(retention_seconds):
                expired += len(keys)
                await self.let_go(keys)
        waiting = await self.objects.delete_pending(self.store.object_deletions.pending, self.store.object_deletions.done)
        orphans = 0
        for prefix in PREFIXES:
            orphans += await self.objects.sweep(prefix, self.store.object_deletions.unnamed, grace_seconds)
        if expired:
            log.info("deleted generated audio past its retention", extra={"count": expired})
        return {"expired": expired, "deleted": waiting, "orphans": orphans}

    async def keep_sweeping(self, retention_seconds: Callable[[], float]) -> None:
        """Forever (a task of the gateway's): a sweep every S3_SWEEP_SECONDS."""
        while True:
            await asyncio.sleep(objects.S3_SWEEP_SECONDS.value)
            try:
                await self.sweep(objects.S3_ORPHAN_GRACE_SECONDS.value, retention_seconds())
            except ApiError as error:  # the database or the store is down: the next round
                log.info("object sweep skipped", extra={"type": error.reason.lower()})

    # --- erasure -------------------------------------------------------------------

    async def erase_account(self, account_id: int, library: Library) -> Erased:
        """Delete all of an account's voice data, everywhere it lives: its voice samples (rows and audio,
        by the library), its generations and its files (rows and objects), and anything else stored
        under the account. The account itself and its keys stay (the caller deletes them)."""
        samples = await library.delete_account_samples(account_id)
        generations, generation_keys = await self.store.generations.delete_account(account_id)
        files, file_keys = await self.store.files.delete_account(account_id)
        await self.store.prompt_samples.forget_account(account_id)
        await self.let_go(generation_keys + file_keys)
        leftovers = 0
        for prefix in PREFIXES:
            leftovers += await self.objects.delete_prefix(f"{prefix}{account_id}/")
        objects_deleted = samples.deleted_objects + len(generation_keys) + len(file_keys) + leftovers
        return Erased(samples.deleted_samples, generations, files, objects_deleted)
