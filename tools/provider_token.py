"""`python -m tools.provider_token <provider_id>`: print one synth provider's registry credential.

Give a provider only this (SYNTH_PROVIDER_TOKEN, with SYNTH_PROVIDER_ID set
to the same id) instead of PROVIDER_SECRET, and it can register, refresh and
remove its own registration and no other (runtime/provider_credentials.py).
The secret is PROVIDER_SECRET, else the one `make run` keeps in
MESH_PROVIDER_SECRET_FILE. The credential is the last line of the output.
"""

from __future__ import annotations

import argparse
import sys

from runtime import provider_credentials
from tools import mesh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.provider_token", description=__doc__.split("\n\n")[0])
    parser.add_argument("provider_id", help="the provider's SYNTH_PROVIDER_ID")
    args = parser.parse_args(argv)
    secret = provider_credentials.PROVIDER_SECRET.value
    if not secret:
        path = mesh.ROOT / mesh.PROVIDER_SECRET_FILE.value
        if not path.exists():
            print(f"PROVIDER_SECRET is not set and {path} does not exist (`make run` makes it)", file=sys.stderr)
            return 1
        secret = mesh.stored_provider_secret(path)
    print(provider_credentials.token(secret, args.provider_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
