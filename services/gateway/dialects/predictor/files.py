"""FileService: the hosted predictor's files API (/v1/files) over the generation domain's input files.

Its client uploads a local file given as a prediction input there by itself
and sends the file's ``urls.get`` as the input.
"""

from __future__ import annotations

import json
from typing import Mapping

from google.api import httpbody_pb2

from runtime import fields
from services.gateway.accounts import Accounts
from services.gateway.generation.files import Files
from voice.predictor.v1 import predictions_pb2, predictions_pb2_grpc


def to_file(row: Mapping, public_url: str) -> predictions_pb2.File:
    found = predictions_pb2.File(
        id=row["id"],
        name=row["name"],
        content_type=row["content_type"],
        size=row["size"],
        etag=f'"{row["sha256"][:32]}"',
        checksums={"sha256": row["sha256"]},
        urls=predictions_pb2.FileUrls(get=f"{public_url.rstrip('/')}/v1/files/{row['id']}/content"),
    )
    found.metadata.SetInParent()  # {} when empty: the client requires the member
    found.metadata.update(json.loads(row["metadata"]))
    found.created_at.FromDatetime(row["create_time"])
    return found


class FileService(predictions_pb2_grpc.FileServiceServicer):
    def __init__(self, accounts: Accounts, files: Files, public_url) -> None:
        self.accounts = accounts
        self.files = files
        self.public_url = public_url  # a callable: the setting's value

    async def CreateFile(self, request, context):
        account_id = await self.accounts.caller(context)
        fields.check_field(request, "filename")  # a name (predictions.proto)
        row = await self.files.create(
            account_id, request.content.data, request.content.content_type, request.filename, request.metadata
        )
        return predictions_pb2.CreateFileResponse(file=to_file(row, self.public_url()))

    async def ListFiles(self, request, context):
        account_id = await self.accounts.caller(context)
        rows = await self.files.newest(account_id)
        return predictions_pb2.ListFilesResponse(results=[to_file(row, self.public_url()) for row in rows])

    async def GetFile(self, request, context):
        account_id = await self.accounts.caller(context)
        return predictions_pb2.GetFileResponse(file=to_file(await self.files.get(account_id, request.id), self.public_url()))

    async def GetFileContent(self, request, context):
        account_id = await self.accounts.caller(context)
        content = await self.files.content(account_id, request.id)
        return predictions_pb2.GetFileContentResponse(
            content=httpbody_pb2.HttpBody(content_type="application/octet-stream", data=content)
        )

    async def DownloadFileContent(self, request, context):
        account_id = await self.accounts.caller(context)
        stored = await self.files.stored(account_id, request.id)
        async for piece in self.files.storage.download(stored, context):
            yield predictions_pb2.DownloadFileContentResponse(content=piece)

    async def DeleteFile(self, request, context):
        account_id = await self.accounts.caller(context)
        await self.files.delete(account_id, request.id)
        return predictions_pb2.DeleteFileResponse()
