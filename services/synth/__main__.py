"""`python -m services.synth`: the Dia synthesis service (a provider for the gateway)."""

from runtime.server import main
from services.synth.service import build_spec

if __name__ == "__main__":
    main(build_spec)
