"""python -m services.gateway: the gateway's gRPC services and the public HTTP API."""

from runtime.server import main
from services.gateway.service import build_spec

if __name__ == "__main__":
    main(build_spec)
