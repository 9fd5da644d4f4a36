"""HTTP API keys: what a key is, how it is stored, and what each role may do (issue 22).

Pure: no I/O. kbank/streams/keystore.py writes and reads the records; kbank/streams/views/access.py
checks every HTTP request against them.

A key is `bk_<id>_<secret>`. `id` (16 hex digits) names the key in lists, logs, the audit
log and each request's `requested_by`; the secret (32 random bytes, base64url) is shown
once, when the key is made, and stored only as its SHA-256. A 256-bit random secret has
nothing to guess, so a fast hash is enough (a slow, salted one protects guessable
passwords) and it is compared in constant time.

Roles:
  operator  every account, every route (the console, /stats, /metrics, deposits)
  client    bound to accounts (a list, a prefix, or both): may open, debit, hold, post,
            void and read only those, may credit anyone; no deposits or withdrawals
            (money entering or leaving the ledger) and no bank-wide figures
  auditor   reads everything, writes nothing
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol

import orjson

from kbank.streams.model import MAX_NAME, is_name

OPERATOR, CLIENT, AUDITOR = "operator", "client", "auditor"
KEY_ROLES = (OPERATOR, CLIENT, AUDITOR)
KEY_PREFIX = "bk_"
MAX_SCOPE_ACCOUNTS = 1000
MAX_LABEL = 200
_ID = re.compile(r"[0-9a-f]{16}")
_KEY = re.compile(r"bk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_MONEY_IN_OR_OUT = frozenset({"deposit", "withdraw"})
_OPERATORS_RULES = frozenset({"set_limits", "freeze", "unfreeze"})   # an account's rules


class InvalidKey(ValueError):
    """A key record or a key's settings that cannot be (a create refused, a record skipped)."""


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: never its secret, only the secret's SHA-256."""

    id: str
    role: str
    secret_sha256: str
    created_ms: int
    created_by: str
    accounts: tuple[str, ...] = ()
    account_prefix: str | None = None
    expires_ms: int | None = None
    revoked_ms: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        assert _ID.fullmatch(self.id), self.id
        assert self.role in KEY_ROLES, self.role
        assert self.role == CLIENT or (not self.accounts and self.account_prefix is None), self

    # -- storage --

    def to_bytes(self) -> bytes:
        return orjson.dumps({"v": 1, **asdict(self)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ApiKey":
        """Raises InvalidKey for anything but a well-formed record."""
        doc = versioned_record(raw, set(cls.__dataclass_fields__), "key")
        ints = ("created_ms", "expires_ms", "revoked_ms")
        if not all(doc[f] is None or _is_int(doc[f]) for f in ints) or doc["created_ms"] is None:
            raise InvalidKey("times must be integers of milliseconds")
        if not (isinstance(doc["secret_sha256"], str) and len(doc["secret_sha256"]) == 64):
            raise InvalidKey("secret_sha256 must be 64 hex digits")
        if not isinstance(doc["accounts"], list) or not isinstance(doc["created_by"], str) \
                or not isinstance(doc["label"], str):
            raise InvalidKey("accounts must be a list, created_by and label strings")
        doc["accounts"] = tuple(doc["accounts"])
        if not isinstance(doc["id"], str) or not _ID.fullmatch(doc["id"]):
            raise InvalidKey("id must be 16 hex digits")
        problem = scope_problem(doc["role"], doc["accounts"], doc["account_prefix"])
        if problem is not None:
            raise InvalidKey(problem)
        return cls(**doc)

    # -- checks --

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_sha256, _digest(secret))

    def refusal(self, now_ms: int) -> str | None:
        """Why this key cannot be used now, if it cannot."""
        if self.revoked_ms is not None:
            return f"API key {self.id} was revoked"
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return f"API key {self.id} expired"
        return None

    def covers(self, account: str) -> bool:
        """Whether the key may act on (debit, read) this account."""
        if self.role != CLIENT:
            return True
        return account in self.accounts or (
            self.account_prefix is not None and account.startswith(self.account_prefix))

    def public(self) -> dict[str, Any]:
        """What `bank keys list` shows: everything but the hash."""
        return {k: v for k, v in asdict(self).items() if k != "secret_sha256"}

    @property
    def principal(self) -> str:
        """How requests made with this key are recorded (`requested_by`)."""
        return f"key:{self.id}"

    @property
    def holder(self) -> str:
        """How a refusal names it."""
        return f"API key {self.id}"


@dataclass(frozen=True)
class NewKey:
    """A key just made: the record to store and the secret to show once."""

    record: ApiKey
    token: str = field(repr=False)


def versioned_record(raw: bytes, fields: set[str], what: str) -> dict[str, Any]:
    """The fields of a version-1 record with exactly `fields` (an API key's, a Kafka
    client's grant); raises InvalidKey for anything else."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidKey(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.pop("v", None) != 1:
        raise InvalidKey(f"not a version-1 {what} record")
    if set(doc) != fields:
        raise InvalidKey(f"fields must be {sorted(fields)}")
    return doc


def scope_problem(role: Any, accounts: Any, prefix: Any) -> str | None:
    """What is wrong with a key's role and account scope, if anything."""
    if role not in KEY_ROLES:
        return f"role must be one of {', '.join(KEY_ROLES)}"
    if prefix is not None and not is_name(prefix):
        return f"the account prefix must be a string of 1 to {MAX_NAME} characters"
    if not isinstance(accounts, (list, tuple)) or len(accounts) > MAX_SCOPE_ACCOUNTS \
            or not all(is_name(a) for a in accounts):
        return f"accounts must be at most {MAX_SCOPE_ACCOUNTS} names of 1 to {MAX_NAME} characters"
    if role == CLIENT and not accounts and prefix is None:
        return "a client key needs accounts or an account prefix"
    if role != CLIENT and (accounts or prefix is not None):
        return f"an {role} key covers every account: it takes no accounts or prefix"
    return None


def new_key(role: str, now_ms: int, created_by: str, accounts: tuple[str, ...] = (),
            account_prefix: str | None = None, expires_ms: int | None = None,
            label: str = "") -> NewKey:
    """Make a key (raises InvalidKey for a scope that cannot be)."""
    problem = scope_problem(role, accounts, account_prefix)
    if problem is None and len(label) > MAX_LABEL:
        problem = f"the label must be at most {MAX_LABEL} characters"
    if problem is None and expires_ms is not None and expires_ms <= now_ms:
        problem = "the expiry must be in the future"
    if problem is not None:
        raise InvalidKey(problem)
    key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    record = ApiKey(key_id, role, _digest(secret), now_ms, created_by, tuple(accounts),
                    account_prefix, expires_ms, None, label)
    return NewKey(record, f"{KEY_PREFIX}{key_id}_{secret}")


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    found = _KEY.fullmatch(token)
    return (found.group(1), found.group(2)) if found else None


def bearer(token: str | None) -> dict[str, str]:
    """The HTTP header that sends a key (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def lookup(keys: Mapping[str, ApiKey], token: str) -> tuple[ApiKey | None, str]:
    """The key a bearer token names among `keys` (by id), or None and why not."""
    parsed = parse_token(token)
    if parsed is None:
        return None, "not an API key (bk_<id>_<secret>)"
    key = keys.get(parsed[0])
    if key is None or not key.matches(parsed[1]):
        return None, "unknown API key"
    return key, ""


class Scope(Protocol):
    """What may send requests: an API key, or a Kafka client's grant (gateway.grants)."""

    role: str

    @property
    def holder(self) -> str: ...

    def covers(self, account: str) -> bool: ...


def submit_refusal(key: Scope, body: dict[str, Any], deciding: str) -> str | None:
    """Why this key (or Kafka client) may not send this request (a validated body), if it
    may not: one rule for HTTP and for the Kafka gateway."""
    kind = body.get("type")
    if key.role == AUDITOR:
        return "an auditor key reads, it never writes"
    if key.role == CLIENT and kind in _MONEY_IN_OR_OUT:
        return f"a {kind} moves money into or out of the ledger: operators only"
    if key.role == CLIENT and kind in _OPERATORS_RULES:
        return f"a {kind} changes an account's rules: operators only"
    if key.role == CLIENT and kind == "open_account" and body.get("overdraft_limit"):
        return "an overdraft lends the bank's money: operators only"
    payers = [deciding] + [m["from"] for m in body.get("transfers", []) if "from" in m] \
        if kind == "linked" else [deciding]
    for payer in payers:
        if not key.covers(payer):
            return f"{key.holder} does not cover account {payer!r}"
    return None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
