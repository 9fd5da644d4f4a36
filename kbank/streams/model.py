"""The records of the system and their exact JSON encodings.

Everything the engine writes is a deterministic function of its input records,
so a batch that is processed again after an abort writes byte-identical
records; consumers rely on that to recognise duplicates.
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any, NewType

import orjson

MAX_AMOUNT = 2**63 - 1  # amounts and balances are signed 64-bit minor units
DAY_MS = 86_400_000
MAX_NAME = 128          # characters of an account name, request id, hold id or requester
DEFAULT_CURRENCY = "USD"  # the currency of an account opened without one
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
GENESIS_HASH = "0" * 64   # the `prev` of a ledger partition's first event
# the change feed's contract (kbank/schemas/*.v1.json): the engine's ledger events and
# outcomes carry it as a Kafka header; a request may say it as a field `v` (1 if absent)
CONTRACT_VERSION = 1
VERSION_HEADERS = [("v", b"1")]


def is_name(value: Any) -> bool:
    """An account name, request id or hold id: a string of 1 to MAX_NAME characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


_CURRENCY = re.compile(r"[A-Z0-9]{3,12}")


def is_currency(value: Any) -> bool:
    """A currency (ledger) code: 3 to 12 upper-case letters or digits."""
    return isinstance(value, str) and _CURRENCY.fullmatch(value) is not None


# minor-unit decimals of the currencies the console shows as 12.50 rather than 1250; any other
# code has 2 (the console's catalogue; the engine only ever sees integers)
CURRENCY_DECIMALS = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "SEK": 2,
                     "NOK": 2, "DKK": 2, "PLN": 2, "INR": 2, "CNY": 2, "JPY": 0, "KRW": 0,
                     "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3, "BTC": 8, "ETH": 18, "USDC": 6,
                     "POINTS": 0}


def metadata_problem(value: Any) -> str | None:
    """What is wrong with a `metadata` object, if anything: string keys to string values,
    at most 16 keys, keys of 1 to 64 characters, values of at most 512."""
    if not isinstance(value, dict):
        return "metadata must be an object of string keys to string values"
    if len(value) > MAX_METADATA_KEYS:
        return f"metadata has {len(value)} keys, over the limit of {MAX_METADATA_KEYS}"
    for k, v in value.items():
        if not 0 < len(k) <= MAX_METADATA_KEY:
            return f"metadata keys must have 1 to {MAX_METADATA_KEY} characters"
        if not isinstance(v, str):
            return "metadata values must be strings"
        if len(v) > MAX_METADATA_VALUE:
            return f"metadata values must have at most {MAX_METADATA_VALUE} characters"
    return None


# One vocabulary per concept (issue 43): a ledger event's kind, a request's status, an
# account's state, a rejection's reason and a message's kind are distinct types, though some
# share a word ("debited" is an event and a status, "frozen" an event and a state); the
# constants of each are typed and listed (EVENT_KINDS, STATUSES, ACCOUNT_STATES, REASONS,
# MESSAGE_KINDS), and a test keeps the lists whole and names every word they share.
EventKind = NewType("EventKind", str)
Status = NewType("Status", str)
AccountState = NewType("AccountState", str)
Reason = NewType("Reason", str)
MessageKind = NewType("MessageKind", str)

# ledger event kinds; `refunded` returns a debited amount whose receiver did not take it
OPENED, DEPOSITED, WITHDRAWN, DEBITED, CREDITED, REFUNDED, REJECTED = map(EventKind, (
    "opened", "deposited", "withdrawn", "debited", "credited", "refunded", "rejected"))
# an account's rules and life: `limits_set` (daily, overdraft, max balance), `frozen` and
# `unfrozen` (debits and holds refused meanwhile), `closed` (for good)
LIMITS_SET, FROZEN, UNFROZEN, CLOSED = map(EventKind, ("limits_set", "frozen", "unfrozen",
                                                       "closed"))
# two-phase transfers: on the sender, `held` reserves, then exactly one of `posted` (moves
# part or all of it, releasing the rest), `hold_released` (voided) or `expired`; on the
# receiver, `incoming_held` and `incoming_released` show money on its way (a post credits it)
HELD, POSTED, HOLD_RELEASED, EXPIRED, INCOMING_HELD, INCOMING_RELEASED = map(EventKind, (
    "held", "posted", "hold_released", "expired", "incoming_held", "incoming_released"))
HOLD_SETTLING = (POSTED, HOLD_RELEASED, EXPIRED)

# how each kind of event moves the balance
BALANCE_SIGN = {OPENED: 0, DEPOSITED: 1, WITHDRAWN: -1, DEBITED: -1, CREDITED: 1,
                REFUNDED: 1, REJECTED: 0, HELD: 0, POSTED: -1, HOLD_RELEASED: 0, EXPIRED: 0,
                INCOMING_HELD: 0, INCOMING_RELEASED: 0, LIMITS_SET: 0, FROZEN: 0, UNFROZEN: 0,
                CLOSED: 0}
EVENT_KINDS: frozenset[EventKind] = frozenset(BALANCE_SIGN)

# outcome statuses, in the order a request moves through them. A hold's own request_id
# goes accepted -> held -> posted | voided | expired (or rejected).
ACCEPTED, DEBITED_STATUS, COMPLETED, REJECTED_STATUS = map(Status, (
    "accepted", "debited", "completed", "rejected"))
HELD_STATUS, POSTED_STATUS, VOIDED_STATUS, EXPIRED_STATUS = map(Status, (
    "held", "posted", "voided", "expired"))
STATUS_RANK: dict[Status, int] = {ACCEPTED: 0, DEBITED_STATUS: 1, HELD_STATUS: 1, COMPLETED: 2, REJECTED_STATUS: 2,
               POSTED_STATUS: 2, VOIDED_STATUS: 2, EXPIRED_STATUS: 2}
FINAL_RANK = 2
STATUSES: frozenset[Status] = frozenset(STATUS_RANK)
# where a client's `?wait=completed` stops: the request's own decision is known
DECIDED_STATUSES = frozenset({COMPLETED, REJECTED_STATUS, HELD_STATUS, POSTED_STATUS,
                              VOIDED_STATUS, EXPIRED_STATUS})


def status_moves(current: str | None, outcome: dict[str, Any], since: int | None = None,
                 window_ms: int = 0) -> bool:
    """The one rule of every status fold (views, verify, recompute, client tails): a status
    only moves forward, and an answer to a re-sent request id (`retry`: the original
    decision restated, or an idempotency_conflict) never moves it.

    An id re-used after the engine's id window (BANK_ID_RETENTION_S) is a new request: with
    `since` (the timestamp of the current status's first decision) and the window, a
    decision stamped at least window_ms later starts the status over (renews)."""
    status = outcome.get("status")
    if status not in STATUS_RANK or outcome.get("retry"):
        return False
    return current is None or STATUS_RANK[status] > STATUS_RANK[current] \
        or renews(current, outcome, since, window_ms)


def id_margin_ms(window_ms: int) -> int:
    """How far behind a partition's latest input an input's time may be for the id window's
    rule (engine/apply.rule_time): a seventh of the window; the engine and the views forget
    an id, or a status, once it is a window and this margin old."""
    return window_ms // 7


def renews(current: str | None, outcome: dict[str, Any], since: int | None,
           window_ms: int) -> bool:
    """Whether an outcome is the first decision of a request id re-used after the window."""
    ts = outcome.get("ts")
    return since is not None and window_ms > 0 and is_final(current) \
        and isinstance(ts, int) and ts - since >= window_ms


def is_final(status: str | None) -> bool:
    return status is not None and STATUS_RANK.get(status) == FINAL_RANK


# rejection reasons
INSUFFICIENT_FUNDS = Reason("insufficient_funds")
LIMIT_EXCEEDED = Reason("limit_exceeded")
UNKNOWN_ACCOUNT = Reason("unknown_account")
INVALID = Reason("invalid")
DUPLICATE = Reason("duplicate")
ACCOUNT_EXISTS = Reason("account_exists")
UNKNOWN_HOLD = Reason("unknown_hold")
HOLD_CLOSED = Reason("hold_closed")       # posted, voided or expired already
HOLD_EXCEEDED = Reason("hold_exceeded")   # a post of more than was held
IDEMPOTENCY_CONFLICT = Reason("idempotency_conflict")   # a request id reused with another body
OVERFLOW = Reason("overflow")             # the result would leave the signed 64-bit range
CURRENCY_MISMATCH = Reason("currency_mismatch")    # the accounts (or the request) differ in currency
MAX_BALANCE_EXCEEDED = Reason("max_balance_exceeded")   # the receiver's balance would pass its cap
ACCOUNT_CLOSED = Reason("account_closed")
ACCOUNT_FROZEN = Reason("account_frozen")
ACCOUNT_NOT_EMPTY = Reason("account_not_empty")    # a close while money is on, held by or held for it
DUPLICATE_EXTERNAL_REF = Reason("duplicate_external_ref")   # the sender used this external_ref already
ENGINE_ERROR = Reason("engine_error")     # the engine failed deciding it again and again (contained)
FORBIDDEN = Reason("forbidden")           # the Kafka gateway: outside the client's grant (never decided)
# reasons that answer a re-sent request id: they never override the first decision's status
RESENT_REASONS = frozenset({DUPLICATE, IDEMPOTENCY_CONFLICT})
REASONS: frozenset[Reason] = frozenset({INSUFFICIENT_FUNDS, LIMIT_EXCEEDED, UNKNOWN_ACCOUNT, INVALID, DUPLICATE,
                     ACCOUNT_EXISTS, UNKNOWN_HOLD, HOLD_CLOSED, HOLD_EXCEEDED,
                     IDEMPOTENCY_CONFLICT, OVERFLOW, CURRENCY_MISMATCH, MAX_BALANCE_EXCEEDED,
                     ACCOUNT_CLOSED, ACCOUNT_FROZEN, ACCOUNT_NOT_EMPTY, DUPLICATE_EXTERNAL_REF,
                     ENGINE_ERROR, FORBIDDEN})

# messages on transfers.credits
CREDIT, REFUND, REJECT_NOTICE = map(MessageKind, ("credit", "refund", "reject_notice"))
# the receiver's pending-in
HOLD_NOTICE, RELEASE_NOTICE = map(MessageKind, ("hold_notice", "release_notice"))
# a linked transfer asks each receiver first
LINK_CHECK, LINK_ACK = map(MessageKind, ("link_check", "link_ack"))
# a linked transfer's member paid by another account (its `from`, the debtor): the debtor
# reserves it (link_reserve), then moves it (link_commit) or releases it (link_abort)
LINK_RESERVE, LINK_COMMIT, LINK_ABORT = map(MessageKind, ("link_reserve", "link_commit",
                                                          "link_abort"))
# (and the engine's own `expire`: storekeys.EXPIRE)
MESSAGE_KINDS: frozenset[MessageKind] = frozenset({
    CREDIT, REFUND, REJECT_NOTICE, HOLD_NOTICE, RELEASE_NOTICE, LINK_CHECK, LINK_ACK,
    LINK_RESERVE, LINK_COMMIT, LINK_ABORT})


def link_hold_key(index: int, coordinator: str, request_id: str) -> str:
    """Where a debtor keeps its reservation for member `index` of a linked transfer sent by
    `coordinator`: never a request_key (those start with a digit), so no id of the debtor's
    own can reach it."""
    return f"L{index}:{request_key(coordinator, request_id)}"


OPEN, FROZEN_STATE, CLOSED_STATE = map(AccountState, ("open", "frozen", "closed"))
ACCOUNT_STATES: frozenset[AccountState] = frozenset({OPEN, FROZEN_STATE, CLOSED_STATE})
# an account's state after an event of its life, by the event's kind
STATE_AFTER: dict[EventKind, AccountState] = {FROZEN: FROZEN_STATE, UNFROZEN: OPEN,
                                              CLOSED: CLOSED_STATE}


@dataclass(slots=True)
class Account:
    """An account's authoritative state, owned by the engine worker of its partition.

    The balance may go down to -overdraft_limit and, if max_balance is set, up to it (a
    liability or settlement account has max_balance 0 and an overdraft)."""

    balance: int = 0
    seq: int = 0                  # seq of the account's latest ledger event
    daily_limit: int | None = None  # most outflow (withdrawals + debits) per UTC day
    day: int = 0                  # UTC day number that `spent` counts
    spent: int = 0                # outflow on `day` (holds count when made)
    held: int = 0                 # reserved by this account's pending holds (pending out)
    pending_in: int = 0           # held for this account by other accounts' pending holds
    currency: str = DEFAULT_CURRENCY
    overdraft_limit: int = 0      # the balance may go down to -overdraft_limit
    max_balance: int | None = None  # the balance may not go above it (None: no cap)
    state: AccountState = OPEN    # open, frozen or closed

    @property
    def available(self) -> int:
        """What may still go out: down to the overdraft floor, less what is held."""
        return self.balance + self.overdraft_limit - self.held

    def to_json(self) -> list[Any]:
        row = [self.balance, self.seq, self.daily_limit, self.day, self.spent]
        if self.currency != DEFAULT_CURRENCY or self.overdraft_limit \
                or self.max_balance is not None or self.state != OPEN:
            return row + [self.held, self.pending_in, self.currency, self.overdraft_limit,
                          self.max_balance, self.state]
        return row + [self.held, self.pending_in] if self.held or self.pending_in else row

    @classmethod
    def from_json(cls, raw: list[Any]) -> "Account":
        return cls(*raw)

    def copy(self) -> "Account":
        return Account(self.balance, self.seq, self.daily_limit, self.day, self.spent,
                       self.held, self.pending_in, self.currency, self.overdraft_limit,
                       self.max_balance, self.state)


PENDING, HOLD_POSTED, HOLD_VOIDED, HOLD_EXPIRED = "pending", "posted", "voided", "expired"


@dataclass(slots=True)
class Hold:
    """A pending (or settled) hold, kept by the engine on its sender's partition.

    Its id is the request_id of the `hold` request that made it. A linked
    transfer is kept as a hold too, with `members` ([receiver, amount], ...) in
    place of the receiver and no deadline, until every receiver has confirmed.
    """

    sender: str
    receiver: str
    amount: int
    deadline: int                 # ms since the epoch, by the log's clock (0: never expires)
    day: int                      # UTC day the hold counted toward the daily limit
    state: str = PENDING
    members: list[list[Any]] | None = None   # a linked transfer's [receiver, amount] pairs
    confirmed: int = 0                       # receivers that confirmed so far
    settled_at: int = 0      # the timestamp of the input that settled it (0: pending)

    def to_json(self) -> list[Any]:
        row = [self.sender, self.receiver, self.amount, self.deadline, self.day, self.state]
        if self.members is not None or self.settled_at:
            row += [self.members, self.confirmed]
        return row + [self.settled_at] if self.settled_at else row

    @classmethod
    def from_json(cls, raw: list[Any]) -> "Hold":
        return cls(*raw)


@dataclass(frozen=True, slots=True)
class Position:
    """Where an input record sits in the log: the `source` of the events it caused."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def request_key(account: str, request_id: str) -> str:
    """The idempotency key of a request: its id in the scope of its deciding account.

    Request ids are scoped per deciding account (the sender of a transfer, hold or linked
    transfer; the account of the others), as Stripe scopes idempotency keys to an account:
    alice's `t1` and bob's `t1` are two requests. Every applied-id marker, every message
    between partitions, the outcomes' record key and the status view use this key. The
    account's length comes first, so no two (account, id) pairs share a key whatever
    characters they hold."""
    return f"{len(account)}:{account}/{request_id}"


def split_request_key(key: str) -> tuple[str, str]:
    """(account, request_id) of a request_key."""
    length, rest = key.split(":", 1)
    n = int(length)
    return rest[:n], rest[n + 1:]


# events an account gets about a request decided on another account's partition: the
# request's scope is the event's counterparty (the sender)
RECEIVED_KINDS = frozenset({CREDITED, INCOMING_HELD, INCOMING_RELEASED})


def event_request_key(event: dict[str, Any], credits_topic_suffix: str = "transfers.credits") -> str:
    """The request_key of the request a ledger event belongs to (a linked transfer's member
    paid by another account names its coordinator, the request's scope, as `link`)."""
    if "link" in event:
        return request_key(event["link"], event["request_id"])
    kind = event["kind"]
    received = kind in RECEIVED_KINDS or (
        kind == REJECTED and event["source"]["topic"].endswith(credits_topic_suffix))
    return request_key(event["counterparty"] if received else event["account"],
                       event["request_id"])


def outcome_key(out: dict[str, Any]) -> str:
    """The request_key of an outcome (its record key on transfers.outcomes)."""
    return request_key(out.get("account") or "", out["request_id"])


def check_account(acct: "Account") -> None:
    """The invariants of an account state, asserted where the engine makes it (what
    `bank replay verify` checks afterwards). A lowered overdraft limit or max_balance
    never undoes what was decided, so the balance is bounded by 64 bits here, and by the
    limits only when an outflow or inflow is decided."""
    assert -MAX_AMOUNT <= acct.balance <= MAX_AMOUNT, acct
    assert 0 <= acct.held <= MAX_AMOUNT and 0 <= acct.pending_in <= MAX_AMOUNT, acct
    assert 0 <= acct.spent <= MAX_AMOUNT and acct.seq >= 0, acct
    assert 0 <= acct.overdraft_limit <= MAX_AMOUNT, acct   # (the currency: when opened)
    assert acct.max_balance is None or 0 <= acct.max_balance <= MAX_AMOUNT, acct
    assert acct.state in (OPEN, FROZEN_STATE, CLOSED_STATE), acct
    assert acct.state != CLOSED_STATE or acct.held == 0, acct   # (pending_in: others' holds)


def ledger_event(account: str, seq: int, request_id: str, kind: EventKind, amount: int,
                 counterparty: str | None, balance: int, ts: int, source: Position,
                 reason: str | None = None, acct: "Account | None" = None,
                 held: int = 0, pending_in: int = 0, hold_id: str | None = None,
                 released: int | None = None) -> dict[str, Any]:
    """A ledger.events record, with a fixed key order so re-encodings are identical.

    An `opened` event carries the account's rules (daily_limit, currency, overdraft_limit,
    max_balance) and a `limits_set` event its new limits, so that the limits view can be
    derived from the ledger alone. Like `balance`, `held` and `pending_in` are the
    account's figures after the event (left out while both are 0); events of a hold name
    it (`hold_id`), and a `posted` event says how much of the hold it `released` back to
    the sender. The request's labels (metadata, external_ref, requested_by) are added by
    the rules; the engine appends `hash` (chain_event) when it writes the event.
    """
    event: dict[str, Any] = {
        "account": account, "seq": seq, "request_id": request_id, "kind": kind,
        "amount": amount, "counterparty": counterparty, "balance": balance, "ts": ts,
        "source": source.to_json(),
    }
    if reason is not None:
        event["reason"] = reason
    if acct is not None and kind in (OPENED, LIMITS_SET):
        event["daily_limit"] = acct.daily_limit
        if kind == OPENED and acct.currency != DEFAULT_CURRENCY:
            event["currency"] = acct.currency
        if acct.overdraft_limit or kind == LIMITS_SET:
            event["overdraft_limit"] = acct.overdraft_limit
        if acct.max_balance is not None or kind == LIMITS_SET:
            event["max_balance"] = acct.max_balance
    if held or pending_in:
        event["held"], event["pending_in"] = held, pending_in
    if hold_id is not None:
        event["hold_id"] = hold_id
    if released is not None:
        event["released"] = released
    return event


def chain_event(prev_hash: str, encoded: bytes) -> tuple[str, bytes]:
    """Chain an encoded ledger event (without `hash`) to its partition's previous event:
    hash = SHA-256(previous hash || the event's canonical encoding), appended as the last
    field. Returns (hash, the encoding with it), which equals orjson.dumps of the event
    with `hash` added, so a reader checks it on the stored bytes (chained_parts) or by
    popping `hash` and encoding the rest."""
    digest = chain_link(prev_hash, encoded)
    return digest, b"%s,\"hash\":\"%s\"}" % (encoded[:-1], digest.encode())


_HASH_FIELD = b',"hash":"'
_HEX_DIGEST = 64                                   # SHA-256 in hex
_HASH_SUFFIX = len(_HASH_FIELD) + _HEX_DIGEST + 2  # ,"hash":"<64 hex digits>"}


def chained_parts(raw: bytes) -> tuple[str, bytes] | None:
    """(stated hash, the bytes it was chained over) of an event in chain_event's form, read
    off the stored bytes without decoding and re-encoding them; None if `raw` is not in that
    form. Every byte but the hash itself is covered by it, so a check of these parts binds
    the whole event."""
    digest_at = -_HEX_DIGEST - 2
    if len(raw) <= _HASH_SUFFIX or raw[-_HASH_SUFFIX:digest_at] != _HASH_FIELD \
            or raw[-2:] != b'"}':
        return None
    stated = raw[digest_at:-2]
    if stated.strip(b"0123456789abcdef"):
        return None
    return stated.decode(), raw[:-_HASH_SUFFIX] + b"}"


def chain_link(prev_hash: str, encoded: bytes) -> str:
    """The hash chain_event gives `encoded` after `prev_hash`."""
    chained = hashlib.sha256(prev_hash.encode())
    chained.update(encoded)
    return chained.hexdigest()


def outcome(account: str, request_id: str, status: Status, ts: int, reason: str | None = None,
            detail: str | None = None, hold: dict[str, Any] | None = None,
            retry: bool = False) -> dict[str, Any]:
    """A transfers.outcomes record (keyed by request_key(account, request_id)); a hold's
    outcomes carry what GET /holds/{id} shows; `retry` marks the answer to a re-sent id."""
    out: dict[str, Any] = {"request_id": request_id, "account": account, "status": status}
    if reason is not None:
        out["reason"] = reason
    if detail is not None:
        out["detail"] = detail
    if hold is not None:
        out["hold"] = hold
    if retry:
        out["retry"] = True
    out["ts"] = ts
    return out


DEADLETTER_COPY_BYTES = 4_096  # of a dead-lettered record's value, the rest is cut (and said so)


def dead_letter(msg: Any, error: str) -> tuple[bytes, bytes]:
    """A transfers.deadletter record (key, value) for a consumed record `msg` (a Kafka
    Message): where it was, why, its key and at most DEADLETTER_COPY_BYTES of its value."""
    value = msg.value() or b""
    key = (msg.key() or b"")[:DEADLETTER_COPY_BYTES]
    record = {"error": error, "topic": msg.topic(), "partition": msg.partition(),
              "offset": msg.offset(), "key": base64.b64encode(key).decode(),
              "value": base64.b64encode(value[:DEADLETTER_COPY_BYTES]).decode(),
              "value_bytes": len(value), "truncated": len(value) > DEADLETTER_COPY_BYTES}
    return key, orjson.dumps(record)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# -- reading records back: what a consumer of the change feed checks before it trusts one --

def labels_ok(record: dict[str, Any]) -> bool:
    """A record's metadata and external_ref, if any, are what a request may carry."""
    return ("metadata" not in record or metadata_problem(record["metadata"]) is None) \
        and ("external_ref" not in record or is_name(record["external_ref"]))


def int_in(value: Any, low: int, high: int) -> bool:
    """An int (not a bool) from low to high. (`type(value) is int`: JSON makes no int
    subclass but bool, and the check runs for every field of every record a reader folds.)"""
    return type(value) is int and low <= value <= high


def _ints_in(record: dict[str, Any], fields: tuple[str, ...], default: Any, low: int,
             high: int) -> bool:
    """Every one of `fields` of the record (`default` if absent) is an int in range."""
    for name in fields:
        value = record.get(name, default)
        if type(value) is not int or not low <= value <= high:
            return False
    return True


def _optional_ints_in(record: dict[str, Any], fields: tuple[str, ...], low: int,
                      high: int) -> bool:
    """Every one of `fields` of the record is absent, null, or an int in range."""
    for name in fields:
        value = record.get(name)
        if value is not None and (type(value) is not int or not low <= value <= high):
            return False
    return True


_EVENT_INTS = ("seq", "amount", "ts")
_EVENT_HOLD_INTS = ("held", "pending_in", "released")
_EVENT_LIMITS = ("daily_limit", "overdraft_limit", "max_balance")


def parse_ledger_event(raw: bytes | None) -> dict[str, Any] | None:
    """A ledger.events record with every field a reader relies on in range, or None: the
    views count and skip anything else rather than fold it (or fail on it), the webhook
    worker delivers nothing of it."""
    try:
        ev = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(ev, dict) or not is_name(ev.get("account")) \
            or not is_name(ev.get("request_id")) or ev.get("kind") not in BALANCE_SIGN \
            or not _ints_in(ev, _EVENT_INTS, None, 0, MAX_AMOUNT) or ev["seq"] < 1 \
            or not int_in(ev.get("balance"), -MAX_AMOUNT, MAX_AMOUNT) \
            or not (ev.get("counterparty") is None or is_name(ev["counterparty"])) \
            or not _ints_in(ev, _EVENT_HOLD_INTS, 0, 0, MAX_AMOUNT) \
            or not _optional_ints_in(ev, _EVENT_LIMITS, 0, MAX_AMOUNT) \
            or not is_currency(ev.get("currency", DEFAULT_CURRENCY)) or not labels_ok(ev) \
            or not ("link" not in ev or is_name(ev["link"])):
        return None
    source = ev.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("topic"), str) \
            or not int_in(source.get("partition"), -1, 2**31) \
            or not int_in(source.get("offset"), -1, 2**63 - 1):
        return None
    return ev
