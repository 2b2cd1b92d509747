"""Prediction webhooks as the hosted predictor sends them, and WebhookService (the signing secret).

A prediction created with ``webhook`` gets the prediction, as GET
/v1/predictions/{id} answers it, POSTed there (signed and retried by
generation/webhooks.py) when it starts and when it has ended;
``webhook_events_filter`` ("start", "output", "logs", "completed"; all when
empty) picks which: "start" is the first, the last counts as "output",
"logs" and "completed".
"""

from __future__ import annotations

import json
from typing import Callable

from google.protobuf import json_format

from runtime.errors import invalid_parameter
from services.gateway.accounts import Accounts
from services.gateway.generation import webhooks
from services.gateway.generation.audio_urls import AudioUrls
from services.gateway.store.predictions import PredictionsTable
from voice.predictor.v1 import predictions_pb2, predictions_pb2_grpc

EVENTS = ("start", "output", "logs", "completed")
# The events each delivery stands for.
DELIVERY_EVENTS = {"start": {"start"}, "completed": {"output", "logs", "completed"}}
check_target = webhooks.check_target


def events_filter(requested: list[str]) -> list[str]:
    unknown = [event for event in requested if event not in EVENTS]
    if unknown:
        raise invalid_parameter(
            "webhook_events_filter", f"unknown webhook event {unknown[0][:40]!r}: use {', '.join(EVENTS)}"
        )
    return sorted(set(requested), key=EVENTS.index) or list(EVENTS)


class PredictionWebhooks:
    """The listener of prediction jobs (generation/jobs.py): a delivery per job event its filter wants."""

    def __init__(
        self, predictions: PredictionsTable, deliveries: webhooks.Webhooks, to_prediction: Callable, urls: AudioUrls
    ) -> None:
        self.predictions = predictions
        self.deliveries = deliveries
        self.to_prediction = to_prediction
        self.urls = urls

    async def __call__(self, generation_id: str, account_id: int, delivery: str) -> None:
        row = await self.predictions.find(generation_id)
        if row is None or not row["webhook"]:
            return  # not a prediction, or one without a webhook
        if not DELIVERY_EVENTS[delivery] & set(json.loads(row["webhook_events_filter"])):
            return
        prediction = self.to_prediction(row, self.urls)
        body = json.dumps(
            json_format.MessageToDict(prediction, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        ).encode()
        await self.deliveries.deliver(row["webhook"], account_id, body, generation_id)


class WebhookService(predictions_pb2_grpc.WebhookServiceServicer):
    def __init__(self, accounts: Accounts, deliveries: webhooks.Webhooks) -> None:
        self.accounts = accounts
        self.deliveries = deliveries

    async def GetDefaultWebhookSecret(self, request, context):
        account_id = await self.accounts.caller(context)
        return predictions_pb2.GetDefaultWebhookSecretResponse(key=await self.deliveries.secret(account_id))
