"""Registration with the gateway's provider registry.

Once the model is loaded the provider sends a heartbeat with its
ProviderInfo every interval (the registry's `heartbeat_interval_seconds`
when it names one, else SYNTH_HEARTBEAT_SECONDS). The gateway may not be up
yet (it starts after synth) or may not implement the registry yet: failures
are retried with backoff, logged once, and never end the service. On
graceful shutdown the provider deregisters, best effort.

Every call carries the provider's credential (runtime/provider_credentials.py);
a registry that refuses it is reported as an error, since retrying will not
help until the secret is fixed (it keeps retrying all the same).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc

from runtime import clients, provider_credentials
from runtime.server import stop_task
from voice.gateway.v1 import providers_pb2, providers_pb2_grpc
from voice.synth.v1 import synth_pb2

log = logging.getLogger("synth.heartbeat")

# Retries back off from FIRST_RETRY_SECONDS to at most LONGEST_RETRY_SECONDS: a
# failed call is cheap, and in the mesh the gateway starts just after synth.
FIRST_RETRY_SECONDS = 0.25
LONGEST_RETRY_SECONDS = 1.0
DEREGISTER_TIMEOUT_SECONDS = 2.0


class Heartbeats:
    def __init__(
        self,
        registry_address: str,
        provider_info: Callable[[], synth_pb2.ProviderInfo],
        interval_seconds: float,
        token: str,
    ) -> None:
        self.registry_address = registry_address
        self.provider_info = provider_info
        self.interval_seconds = interval_seconds
        self._metadata = ((provider_credentials.TOKEN_METADATA, token),)
        if not token:
            log.warning(
                "no provider credential (PROVIDER_SECRET or SYNTH_PROVIDER_TOKEN): the registry will refuse this provider"
            )
        self.sent = 0  # heartbeats the registry accepted
        self._channel = clients.channel(registry_address)
        self._registry = providers_pb2_grpc.ProviderRegistryServiceStub(self._channel)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        interval = self.interval_seconds
        retry = FIRST_RETRY_SECONDS
        failing = False
        while True:
            try:
                reply = await self._registry.Heartbeat(
                    providers_pb2.HeartbeatRequest(provider=self.provider_info()),
                    timeout=max(interval, 1.0),
                    metadata=self._metadata,
                )
            except grpc.aio.AioRpcError as error:
                if not failing:
                    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                        log.error(
                            "the provider registry refuses this provider's credential: the gateway and this "
                            "provider need the same PROVIDER_SECRET (or SYNTH_PROVIDER_TOKEN made for this id)",
                            extra={"registry": self.registry_address, "provider_id": self.provider_info().provider_id},
                        )
                    else:
                        log.info(
                            "provider registry not reachable yet; retrying quietly",
                            extra={"registry": self.registry_address, "code": error.code().name},
                        )
                    failing = True
                await asyncio.sleep(retry)
                retry = min(retry * 2, interval, LONGEST_RETRY_SECONDS)
                continue
            if failing or self.sent == 0:
                log.info("registered with the provider registry", extra={"registry": self.registry_address})
            failing, retry = False, FIRST_RETRY_SECONDS
            self.sent += 1
            if reply.heartbeat_interval_seconds > 0:
                interval = reply.heartbeat_interval_seconds
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop sending and deregister (best effort, short deadline)."""
        await stop_task(self._task)
        try:
            await self._registry.DeregisterProvider(
                providers_pb2.DeregisterProviderRequest(provider_id=self.provider_info().provider_id),
                timeout=DEREGISTER_TIMEOUT_SECONDS,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            log.info("could not deregister", extra={"code": error.code().name})
        await self._channel.close()
