"""The generation resource: a stored row as the Generation message the API answers with."""

from __future__ import annotations

from typing import Mapping

import json

from google.protobuf import json_format, timestamp_pb2

from services.gateway.generation.audio_urls import AudioUrls
from services.gateway.store.generations import SHARED_VISIBILITIES
from voice.gateway.v1 import generations_pb2


def generation_message(row: Mapping, urls: AudioUrls) -> generations_pb2.Generation:
    generation = generations_pb2.Generation(
        id=row["id"],
        status=row["status"],
        input=row["input"],
        model=row["model"],
        provider=row["provider"],
        speakers=json.loads(row["speakers"]),
        speaker_names=json.loads(row["speaker_names"]),
        parameters=json_format.Parse(row["parameters"], generations_pb2.GenerationParameters()),
        error_type=row["error_type"],
        error_message=row["error_message"],
        audio_duration_seconds=row["audio_duration_seconds"],
        visibility=row["visibility"],
        collection=row["collection"],
        chunks=row["chunks"],
        synthesis_seconds=row["synthesis_seconds"],
        key_id=row["key_public_id"],
        audio_expired=row["audio_expired"],
    )
    if row["analysis"] is not None:
        json_format.Parse(row["analysis"], generation.analysis)
    if row["visibility"] in SHARED_VISIBILITIES:
        generation.share_url = urls.share_url(row["share_token"])
    if row["status"] == "succeeded" and not row["audio_expired"]:  # it has audio
        generation.audio_url = urls.audio_url(row["id"], row["url_epoch"])
    for field in ("create_time", "start_time", "end_time"):
        if row[field] is not None:
            getattr(generation, field).CopyFrom(timestamp(row[field]))
    return generation


def timestamp(value) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp
