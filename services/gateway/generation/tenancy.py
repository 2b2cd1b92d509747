"""Keys, accounts and usage: the KeyService, AccountService and UsageService (accounts.proto).

* KeyService: the caller's own keys (scope ``keys``), who is calling
  (GET /v1/me, any key), browser tokens (scope ``generate``).
* AccountService: every account, for operators (scope ``admin``). Deleting
  an account (:class:`AccountDeletion`) makes it a tombstone first (no key
  works any more: at once here, within the key cache's time elsewhere, and
  no generation is admitted on any replica), then deletes its samples in the
  library (AccountDataService.DeleteAccountSamples) and every row of it in the
  gateway's schema, and does both once more after every replica's key cache
  has expired and any generation it let in has ended, so that nothing
  written meanwhile survives. Each step can run again: a deletion cut short
  is finished by calling it again, or by the next round.
* UsageService: what the account used (scope ``usage:read``), from the
  gateway's usage rows (generations, characters, audio and synthesis
  seconds, written by the statements that do the work: store/generations.py)
  and the library's (samples stored and their bytes, written by the
  statement that stores a sample), read over gRPC: each service meters what
  it does, in its own schema, so that nothing is counted twice or lost
  between two services.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from runtime import fields, pagination
from runtime.errors import ApiError, invalid_parameter
from services.gateway.accounts import Accounts
from services.gateway.config import USAGE_MAX_DAYS
from services.gateway.generation.library import Library
from services.gateway.generation.resources import timestamp
from services.gateway.generation.storage import AudioStorage
from services.gateway.store.accounts import SETTABLE, AccountsTable
from services.gateway.store.usage import UsageTable
from voice.gateway.v1 import accounts_pb2, accounts_pb2_grpc

log = logging.getLogger("gateway.accounts")

DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# How many expired browser tokens are kept (for a few hours' `last used`), before they are swept.
EXPIRED_TOKENS_KEPT_SECONDS = 3600.0


# --- messages -------------------------------------------------------------------------


def key_message(row: Mapping) -> accounts_pb2.ApiKey:
    key = accounts_pb2.ApiKey(
        id=row["public_id"], name=row["name"], prefix=row["prefix"], scopes=list(row["scopes"]), kind=row["kind"]
    )
    key.create_time.CopyFrom(timestamp(row["created_at"]))
    if row["last_used_at"] is not None:
        key.last_used_time.CopyFrom(timestamp(row["last_used_at"]))
    if row["expires_at"] is not None:
        key.expire_time.CopyFrom(timestamp(row["expires_at"]))
    return key


def account_message(row: Mapping) -> accounts_pb2.Account:
    account = accounts_pb2.Account(id=row["id"], name=row["name"], disabled=row["disabled_at"] is not None)
    account.create_time.CopyFrom(timestamp(row["created_at"]))
    if row["disabled_at"] is not None:
        account.disable_time.CopyFrom(timestamp(row["disabled_at"]))
    for column in SETTABLE:
        if row[column] is not None:
            setattr(account, column, row[column])
    return account


def settings_of(request, *, negative_removes: bool) -> dict:
    """The limits and quotas a request sets (present fields), None for those it removes (negative)."""
    found = {}
    for column in SETTABLE:
        if request.HasField(column):
            value = getattr(request, column)
            found[column] = None if negative_removes and value < 0 else value
    return found


# --- usage ----------------------------------------------------------------------------


def _date(text: str, param: str, fallback: datetime.date) -> datetime.date:
    if not text:
        return fallback
    try:
        if not DATE.fullmatch(text):
            raise ValueError
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise invalid_parameter(param, f"{param} must be a date as YYYY-MM-DD (\"2025-01-31\"), got {text[:40]!r}") from None


def date_range(start_date: str, end_date: str, today: datetime.date) -> tuple[datetime.date, datetime.date]:
    """The range of UTC days a usage request covers: this month until today unless it says otherwise."""
    end = _date(end_date, "end_date", today)
    start = _date(start_date, "start_date", today.replace(day=1) if not end_date else end.replace(day=1))
    if start > end:
        raise invalid_parameter("start_date", f"start_date {start} is after end_date {end}")
    days = (end - start).days + 1
    if days > USAGE_MAX_DAYS.value:
        raise invalid_parameter(
            "start_date", f"the range covers {days} days; at most {USAGE_MAX_DAYS.value} may be asked at once"
        )
    return start, end


@dataclass
class _Counts:
    generations: int = 0
    characters: int = 0
    audio_seconds: float = 0.0
    synthesis_seconds: float = 0.0
    samples_stored: int = 0
    sample_bytes: int = 0

    def add(self, other: "_Counts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class UsageReports:
    """An account's usage over a range of days, grouped, with this month's quotas."""

    def __init__(self, usage: UsageTable, accounts: AccountsTable, library: Library) -> None:
        self.usage = usage
        self.accounts = accounts
        self.library = library

    async def report(self, account_id: int, start_date: str, end_date: str, group_by: Iterable[str]) -> accounts_pb2.Usage:
        start, end = date_range(start_date, end_date, datetime.datetime.now(datetime.UTC).date())
        by_day = "day" in group_by
        by_key = "key" in group_by
        gateway_rows, library_usage, account, month = await asyncio.gather(
            self.usage.days(account_id, start, end),
            self.library.sample_usage(account_id, start.isoformat(), end.isoformat()),
            self.accounts.get_account(account_id),
            self.usage.this_month(account_id),
        )
        cells: dict[tuple[str, int], _Counts] = defaultdict(_Counts)
        for row in gateway_rows:
            cells[(row["day"].isoformat(), row["key_id"])].add(
                _Counts(row["generations"], row["characters"], row["audio_seconds"], row["synthesis_seconds"])
            )
        for day in library_usage.days:
            cells[(day.date, day.key_id)].add(_Counts(samples_stored=day.samples, sample_bytes=day.bytes))
        groups: dict[tuple[str, int], _Counts] = defaultdict(_Counts)
        total = _Counts()
        for (day, key_id), counts in cells.items():
            groups[(day if by_day else "", key_id if by_key else -1)].add(counts)
            total.add(counts)
        keys = await self.accounts.keys_by_number(account_id, [key_id for _, key_id in groups if key_id > 0])
        usage = accounts_pb2.Usage(
            start_date=start.isoformat(),
            end_date=end.isoformat(),
            total=_bucket(total),
            stored_samples=library_usage.stored_samples,
            stored_sample_bytes=library_usage.stored_bytes,
        )
        if by_day or by_key:
            for (day, key_id), counts in sorted(groups.items()):
                bucket = _bucket(counts, date=day)
                if key_id in keys:
                    bucket.key_id, bucket.key_name, bucket.key_prefix = (
                        keys[key_id]["public_id"], keys[key_id]["name"], keys[key_id]["prefix"]
                    )
                usage.buckets.append(bucket)
        usage.quota.CopyFrom(quota_status(account, month))
        return usage


def _bucket(counts: _Counts, date: str = "") -> accounts_pb2.UsageBucket:
    return accounts_pb2.UsageBucket(
        date=date,
        generations=counts.generations,
        characters=counts.characters,
        audio_seconds=counts.audio_seconds,
        synthesis_seconds=counts.synthesis_seconds,
        samples_stored=counts.samples_stored,
        sample_bytes=counts.sample_bytes,
    )


def quota_status(account: Mapping, month: Mapping) -> accounts_pb2.QuotaStatus:
    status = accounts_pb2.QuotaStatus()
    status.period_start.CopyFrom(timestamp(month["period_start"]))
    status.reset_time.CopyFrom(timestamp(month["reset_time"]))
    for name in ("audio_seconds", "characters", "generations"):
        limit = account[f"monthly_{name}"]
        if limit is not None:
            used = float(month[name])
            status.quotas.append(accounts_pb2.Quota(name=name, limit=limit, used=used, remaining=max(0.0, limit - used)))
    return status


# --- keys -----------------------------------------------------------------------------


class KeyService(accounts_pb2_grpc.KeyServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.table = accounts.table

    async def GetCaller(self, request, context):
        caller = await self.accounts.principal(context)
        account = await self.table.get_account(caller.account_id)
        key = await self.table.get_key(caller.account_id, caller.credential_id)
        return accounts_pb2.GetCallerResponse(account=account_message(account), key=key_message(key))

    async def CreateKey(self, request, context):
        caller = await self.accounts.principal(context)
        fields.check(request)
        row, secret = await self.accounts.create_key(
            caller.account_id,
            request.name,
            list(request.scopes),
            request.expire_time if request.HasField("expire_time") else None,
            within=caller,
        )
        return accounts_pb2.CreateKeyResponse(key=key_message(row), secret=secret)

    async def ListKeys(self, request, context):
        account_id = await self.accounts.caller(context)
        return accounts_pb2.ListKeysResponse(keys=[key_message(row) for row in await self.table.list_keys(account_id)])

    async def UpdateKey(self, request, context):
        account_id = await self.accounts.caller(context)
        fields.check(request)
        row = await self.table.rename_key(account_id, request.id, request.name.strip())
        return accounts_pb2.UpdateKeyResponse(key=key_message(row))

    async def RevokeKey(self, request, context):
        account_id = await self.accounts.caller(context)
        await self.accounts.revoke_key(account_id, request.id)
        return accounts_pb2.RevokeKeyResponse()

    async def CreateBrowserToken(self, request, context):
        caller = await self.accounts.principal(context)
        fields.check(request)
        row, token = await self.accounts.mint_token(
            caller, request.ttl_seconds if request.HasField("ttl_seconds") else None
        )
        response = accounts_pb2.CreateBrowserTokenResponse(token=token, scopes=list(row["scopes"]))
        response.expire_time.CopyFrom(timestamp(row["expires_at"]))
        return response


# --- accounts -------------------------------------------------------------------------


class AccountDeletion:
    """Deleting an account with everything it has, everywhere (see the module's docstring)."""

    def __init__(self, accounts: Accounts, library: Library, storage: AudioStorage, purge_again_after_seconds) -> None:
        self.accounts = accounts
        self.library = library
        self.storage = storage
        self.purge_again_after_seconds = purge_again_after_seconds  # a callable: from the settings

    async def delete(self, account_id: int) -> None:
        was_live = await self.accounts.mark_deleted(account_id, self.purge_again_after_seconds())
        samples, rows = await self._purge(account_id)
        log.warning(
            "account deleted with all its data" if was_live else "deleted account purged again",
            extra={"account_id": account_id, "samples": samples, "rows": rows},
        )

    async def _purge(self, account_id: int) -> tuple[int, dict[str, int]]:
        # Its voice data first, with the objects in storage (samples by the library, generations and
        # files here), then every row of the gateway's that is left.
        erased = await self.storage.erase_account(account_id, self.library)
        rows = await self.accounts.table.purge(account_id)
        return erased.samples, rows

    async def purge_again(self) -> int:
        """Purge once more the deleted accounts whose time has come (what other replicas let in while
        their key caches still knew the account's keys); how many."""
        done = 0
        for account_id in await self.accounts.table.due_for_another_purge():
            samples, rows = await self._purge(account_id)
            await self.accounts.table.purged_for_good(account_id)
            if samples or any(rows.values()):
                log.warning(
                    "deleted account purged of what came after its deletion",
                    extra={"account_id": account_id, "samples": samples, "rows": rows},
                )
            done += 1
        return done

    async def keep_purging(self, every_seconds: float) -> None:
        """Forever (a task of the gateway's): the second purges, and expired browser tokens swept."""
        while True:
            try:
                await self.purge_again()
                await self.accounts.table.sweep_tokens(EXPIRED_TOKENS_KEPT_SECONDS)
            except ApiError as error:  # the database or the library down: the next round does it
                log.info("account purge postponed", extra={"type": error.reason.lower()})
            except Exception:  # noqa: BLE001 - the task must go on
                log.exception("account purge failed")
            await asyncio.sleep(every_seconds)


# An accounts page token names the last account of the previous page by its id.
_TOKEN = re.compile(r"a1:([0-9]{1,18})")


def _encode_page_token(account_id: int) -> str:
    return base64.urlsafe_b64encode(f"a1:{account_id}".encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        match = _TOKEN.fullmatch(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        match = None
    if match is None:
        raise invalid_parameter("page_token", "page_token is not valid: pass the next_page_token of the previous page")
    return int(match.group(1))


class AccountService(accounts_pb2_grpc.AccountServiceServicer):
    def __init__(self, accounts: Accounts, deletion: AccountDeletion, reports: UsageReports) -> None:
        self.accounts = accounts
        self.table = accounts.table
        self.deletion = deletion
        self.reports = reports

    async def CreateAccount(self, request, context):
        await self.accounts.caller(context)
        fields.check(request)
        name = self.accounts.check_account_name(request.name.strip())
        row = await self.table.create_account(name, settings_of(request, negative_removes=False))
        log.info("account created", extra={"account_id": row["id"]})
        return accounts_pb2.CreateAccountResponse(account=account_message(row))

    async def ListAccounts(self, request, context):
        await self.accounts.caller(context)
        fields.check(request)
        limit = pagination.page_size(request.page_size)
        rows = await self.table.list_accounts(_decode_page_token(request.page_token), limit + 1)
        page, more = rows[:limit], len(rows) > limit
        return accounts_pb2.ListAccountsResponse(
            accounts=[account_message(row) for row in page],
            next_page_token=_encode_page_token(page[-1]["id"]) if more else "",
        )

    async def GetAccount(self, request, context):
        await self.accounts.caller(context)
        return accounts_pb2.GetAccountResponse(account=account_message(await self.table.get_account(request.id)))

    async def UpdateAccount(self, request, context):
        await self.accounts.caller(context)
        fields.check(request)
        row = await self.accounts.set_disabled(
            request.id,
            settings_of(request, negative_removes=True),
            request.disabled if request.HasField("disabled") else None,
        )
        return accounts_pb2.UpdateAccountResponse(account=account_message(row))

    async def DeleteAccount(self, request, context):
        await self.accounts.caller(context)
        await self.deletion.delete(request.id)
        return accounts_pb2.DeleteAccountResponse()

    async def CreateAccountKey(self, request, context):
        await self.accounts.caller(context)
        fields.check(request)
        row, secret = await self.accounts.create_key(
            request.account_id,
            request.name,
            list(request.scopes),
            request.expire_time if request.HasField("expire_time") else None,
        )
        return accounts_pb2.CreateAccountKeyResponse(key=key_message(row), secret=secret)

    async def GetAccountUsage(self, request, context):
        await self.accounts.caller(context)
        fields.check(request)
        await self.table.get_account(request.account_id)  # NOT_FOUND before anything is read
        usage = await self.reports.report(request.account_id, request.start_date, request.end_date, request.group_by)
        return accounts_pb2.GetAccountUsageResponse(usage=usage)


class UsageService(accounts_pb2_grpc.UsageServiceServicer):
    def __init__(self, accounts: Accounts, reports: UsageReports) -> None:
        self.accounts = accounts
        self.reports = reports

    async def GetUsage(self, request, context):
        account_id = await self.accounts.caller(context)
        fields.check(request)
        usage = await self.reports.report(account_id, request.start_date, request.end_date, request.group_by)
        return accounts_pb2.GetUsageResponse(usage=usage)
