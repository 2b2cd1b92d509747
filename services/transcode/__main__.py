"""Run the transcode service: ``python -m services.transcode`` from the repository root."""

from __future__ import annotations

from runtime.server import ServiceSpec, Servicer, main
from services.transcode import config
from services.transcode.service import TranscodeService, limits_from_settings
from voice.transcode.v1 import transcode_pb2_grpc


def build_spec() -> ServiceSpec:
    service = TranscodeService(limits_from_settings(), config.WORKERS.value)
    return ServiceSpec(
        name="transcode",
        servicers=[
            Servicer(
                transcode_pb2_grpc.add_TranscodeServiceServicer_to_server,
                service,
                "voice.transcode.v1.TranscodeService",
            )
        ],
        on_stop=service.close,
    )


if __name__ == "__main__":
    main(build_spec)
