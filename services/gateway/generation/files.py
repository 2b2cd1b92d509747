"""Files uploaded as generation inputs (POST /v1/files): an account's own, kept until deleted.

A file is given later as a voice to clone by its URL (audio_inputs.py reads
it from the store, never over HTTP). Its metadata is a JSON object of the
caller's own. Its content is in the object store (storage.py), stored before
its row; deleting the file deletes both.
"""

from __future__ import annotations

import hashlib
import secrets

import grpc

from runtime.errors import ApiError, invalid_parameter
from services.gateway.config import MAX_FILE_BYTES
from services.gateway.generation.metadata import parse_metadata
from services.gateway.generation.storage import AudioStorage, file_key
from services.gateway.store.files import FilesTable

ID_PREFIX = "file_"
DEFAULT_TYPE = "application/octet-stream"
# Longest name and content type kept.
MAX_TEXT = 255


def too_large(what: str, param: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
        f"{what} is larger than the limit of {MAX_FILE_BYTES.value} bytes",
        param=param,
    )


class Files:
    def __init__(self, table: FilesTable, storage: AudioStorage) -> None:
        self.table = table
        self.storage = storage

    async def create(self, account_id: int, content: bytes, content_type: str, name: str, metadata: str):
        """Store an upload: its content in the object store, then its row (without the content)."""
        if not content:
            raise invalid_parameter("content", "the file is empty: send it in the multipart part \"content\"")
        if len(content) > MAX_FILE_BYTES.value:
            raise too_large("the file", "content")
        kept = parse_metadata(metadata)
        file_id = ID_PREFIX + secrets.token_hex(12)
        key = file_key(account_id, file_id)
        async with self.storage.keeping(key):
            await self.storage.objects.put(key, content, DEFAULT_TYPE)
            return await self.table.add(
                file_id,
                account_id,
                (name or file_id)[:MAX_TEXT],
                (content_type or DEFAULT_TYPE)[:MAX_TEXT],
                hashlib.sha256(content).hexdigest(),
                kept,
                key,
                len(content),
            )

    async def get(self, account_id: int, file_id: str):
        return await self.table.get(account_id, file_id)

    async def content(self, account_id: int, file_id: str) -> bytes:
        """The whole content (read as a voice to clone)."""
        return await self.storage.read(await self.table.content(account_id, file_id))

    async def stored(self, account_id: int, file_id: str):
        """Where the content is, for a download (runtime/downloads.py)."""
        return await self.table.content(account_id, file_id)

    async def newest(self, account_id: int):
        return await self.table.newest(account_id)

    async def delete(self, account_id: int, file_id: str) -> None:
        key = await self.table.delete(account_id, file_id)
        await self.storage.let_go([key] if key else [])
