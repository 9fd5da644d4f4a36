"""The request contract: every request kind described once (REQUEST_KINDS: its fields, the
required ones, the field naming the account that decides it, what it does), and the parser
that checks a transfers.requests record against it, field by field, before any rule runs.
Adding a request kind is one row here plus its rule in request_rules."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from kbank.streams.model import (CONTRACT_VERSION, LINK_RESERVE, MAX_AMOUNT, MAX_NAME, is_currency,
                                 is_name, metadata_problem)
from kbank.streams.storekeys import EXPIRE

MAX_HOLD_TIMEOUT_S = 366 * 86_400
MAX_LINKED = 16
MAX_REQUEST_BYTES = 16_384   # a larger transfers.requests record is rejected, never copied
MAX_DETAIL = 200             # characters of client data quoted in a rejection's detail
_LIMITS = ("daily_limit", "overdraft_limit", "max_balance")
TAGS = ("metadata", "external_ref")   # a request's labels, copied into all it causes
# who sent a request: set by the HTTP intake to the API key's principal (`key:<id>`), or by
# the Kafka gateway to a client's (`kafka:<name>`); carried into the ledger events, messages
# and outcomes it causes
REQUESTED_BY = "requested_by"
VERSION = "v"   # the contract's version a request may state (CONTRACT_VERSION if absent)


@dataclass(frozen=True)
class RequestKind:
    """One request type of the contract, described once: its fields, the field that names
    its deciding account, and what it is (issue 43: it was seven parallel tables)."""

    name: str
    required: frozenset[str]         # besides type and request_id
    optional: frozenset[str]         # besides requested_by and v
    deciding: str = "account"        # the field naming the account that decides it
    to_another: bool = False         # names a `to` (another account)
    settles_hold: bool = False       # names a `hold_id`
    rules_account: bool = False      # changes an account's rules or life
    moves_out: bool = False          # moves money out: refused on a frozen account

    @property
    def fields(self) -> frozenset[str]:
        return self.required | self.optional | {"type", "request_id", REQUESTED_BY, VERSION}


def _kind(name: str, required: str, optional: str = "", **what: Any) -> RequestKind:
    return RequestKind(name, frozenset(required.split()), frozenset(optional.split()), **what)


REQUEST_KINDS: dict[str, RequestKind] = {k.name: k for k in (
    _kind("open_account", "account", f"currency {' '.join(_LIMITS)} metadata"),
    _kind("deposit", "account amount", "currency metadata"),
    _kind("withdraw", "account amount", "currency metadata", moves_out=True),
    _kind("transfer", "from to amount", "currency metadata external_ref", deciding="from",
          to_another=True, moves_out=True),
    _kind("hold", "from to amount timeout_s", "currency metadata external_ref", deciding="from",
          to_another=True, moves_out=True),
    _kind("post", "hold_id from", "amount metadata", deciding="from", settles_hold=True,
          moves_out=True),
    _kind("void", "hold_id from", "metadata", deciding="from", settles_hold=True),
    _kind("linked", "from transfers", "currency metadata external_ref", deciding="from",
          moves_out=True),
    _kind("set_limits", "account", " ".join(_LIMITS), rules_account=True),
    _kind("close_account", "account", rules_account=True),
    _kind("freeze", "account", rules_account=True),
    _kind("unfreeze", "account", rules_account=True),
)}
# what the rules ask of a kind, read off REQUEST_KINDS (sets: the parser's hot path)
_FIELDS = {name: set(k.fields) for name, k in REQUEST_KINDS.items()}
_REQUIRED = {name: {"type", "request_id", *k.required} for name, k in REQUEST_KINDS.items()}
_ACCOUNT_RULES = frozenset(n for n, k in REQUEST_KINDS.items() if k.rules_account)
# what a frozen account refuses: everything that moves money out (a linked transfer's member
# paid by another account, too)
_OUTGOING = frozenset({*(n for n, k in REQUEST_KINDS.items() if k.moves_out), LINK_RESERVE})
_SENT_FROM = frozenset(n for n, k in REQUEST_KINDS.items() if k.deciding == "from")
_TO_ANOTHER = frozenset(n for n, k in REQUEST_KINDS.items() if k.to_another)
_SETTLING = frozenset(n for n, k in REQUEST_KINDS.items() if k.settles_hold)


def deciding_account(body: dict[str, Any]) -> Any:
    """The field naming the account that decides a request (and keys its record)."""
    kind = body.get("type")
    return body.get("from") if isinstance(kind, str) and kind in _SENT_FROM \
        else body.get("account")


def fingerprint(body: dict[str, Any]) -> str:
    """What makes two requests with one id the same request: the whole body, in any key order,
    but who sent it (a retry through a rotated key is still the same request) and the
    contract version it states."""
    if REQUESTED_BY in body or VERSION in body:
        body = {k: v for k, v in body.items() if k not in (REQUESTED_BY, VERSION)}
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
                           digest_size=12).hexdigest()


_LABEL_KEYS = frozenset((*TAGS, REQUESTED_BY))
_CHECKED_LABELS = frozenset((*TAGS, "currency"))    # what _labels_problem looks at


def _labels(body: dict[str, Any]) -> dict[str, Any]:
    """The labels of a valid request or message, in a fixed order: metadata, external_ref,
    requested_by."""
    if not body.keys() & _LABEL_KEYS:
        return {}     # most records carry none: the set operation is one C call
    labels = {k: body[k] for k in TAGS if k in body}
    by = body.get(REQUESTED_BY)
    if is_name(by):
        labels[REQUESTED_BY] = by
    return labels


@dataclass(slots=True)
class Request:
    """A request that parsed; `problem` is set when it must be rejected as invalid."""

    body: dict[str, Any]
    request_id: str
    account: str | None          # the deciding account (sender of a transfer)
    problem: str | None = None


class Undecodable(ValueError):
    """A record with no usable request_id: it goes to the dead-letter topic."""


def _quote(value: Any) -> str:
    """Client data in a detail message, bounded."""
    text = repr(value)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _amount_problem(value: Any) -> str | None:
    if not _is_int(value):
        return "amount must be an integer number of minor units"
    if value <= 0:
        return "amount must be positive"
    if value > MAX_AMOUNT:
        return "amount exceeds the 64-bit range"
    return None


def parse_json(raw: bytes) -> Any:
    """Decode JSON, accepting integers beyond 64 bits so they can be rejected with a reason."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits; the stdlib parses them so the
        # request can be rejected with a reason instead of dead-lettered.
        try:
            body = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        try:
            orjson.dumps(body)   # the stdlib accepts lone UTF-16 surrogates ("\ud800"): refuse them
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"not valid Unicode: {exc}") from None
        return body


def parse_request(key: bytes | None, value: bytes | None) -> Request:
    """Validate a transfers.requests record. Raises Undecodable if no request_id."""
    if value is None:
        raise Undecodable("empty record")
    try:
        body = parse_json(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Undecodable(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Undecodable("not a JSON object")
    request_id = body.get("request_id")
    if not is_name(request_id):
        raise Undecodable("request_id must be a string of 1 to 128 characters")
    kind = body.get("type")
    account = deciding_account(body)
    account = account if is_name(account) else None
    req = Request(body, request_id, account)
    if len(value) > MAX_REQUEST_BYTES:
        req.problem = f"the request is {len(value)} bytes, over the limit of {MAX_REQUEST_BYTES}"
    elif not isinstance(kind, str):
        req.problem = f"type must be a string, not {_quote(kind)}"
    elif kind == EXPIRE:
        req.problem = "expire is the engine's own: a hold expires at its deadline"
    elif kind not in _FIELDS:
        req.problem = f"unknown type {_quote(kind)}"
    elif extra := set(body) - _FIELDS[kind]:
        req.problem = f"unknown fields: {_quote(sorted(extra))}"
    elif body.get(VERSION, CONTRACT_VERSION) != CONTRACT_VERSION or isinstance(body.get(VERSION), bool):
        req.problem = f"v must be {CONTRACT_VERSION}, the version of the request contract"
    elif missing := _REQUIRED[kind] - set(body):
        req.problem = f"missing fields: {sorted(missing)}"
    elif account is None:
        req.problem = "account names must be strings of 1 to 128 characters"
    elif REQUESTED_BY in body and not is_name(body[REQUESTED_BY]):
        req.problem = f"requested_by must be a string of 1 to {MAX_NAME} characters"
    elif kind in _TO_ANOTHER and not is_name(body["to"]):
        req.problem = "account names must be strings of 1 to 128 characters"
    elif kind in _TO_ANOTHER and body["from"] == body["to"]:
        req.problem = "from and to are the same account"
    elif kind in _SETTLING and not is_name(body["hold_id"]):
        req.problem = "hold_id must be a string of 1 to 128 characters"
    elif kind == "hold" and (not _is_int(body["timeout_s"])
                             or not 1 <= body["timeout_s"] <= MAX_HOLD_TIMEOUT_S):
        req.problem = f"timeout_s must be an integer from 1 to {MAX_HOLD_TIMEOUT_S}"
    elif kind == "linked":
        req.problem = _members_problem(account, body["transfers"])
    elif kind == "void" or (kind == "post" and body.get("amount") is None):
        pass
    elif kind in ("open_account", "set_limits"):
        req.problem = _limits_problem(body, kind)
    elif kind in _ACCOUNT_RULES:
        pass
    else:
        req.problem = _amount_problem(body["amount"])
    if req.problem is None and body.keys() & _CHECKED_LABELS:
        req.problem = _labels_problem(body)
    if account is not None and (key is None or key != account.encode()):
        req.problem = req.problem or "record key must equal the deciding account"
        req.account = None  # its state (and id scope) lives on another partition: touch nothing
    return req


def _limits_problem(body: dict[str, Any], kind: str) -> str | None:
    """An account's opening rules or new limits, if anything is wrong with them."""
    for name in ("daily_limit", "max_balance"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or not 0 <= value <= MAX_AMOUNT):
            return f"{name} must be null or an integer from 0 to 2^63-1"
    overdraft = body.get("overdraft_limit", 0)
    if not _is_int(overdraft) or not 0 <= overdraft <= MAX_AMOUNT:
        return "overdraft_limit must be an integer from 0 to 2^63-1"
    if kind == "set_limits" and not set(_LIMITS) & set(body):
        return f"set_limits changes at least one of {', '.join(_LIMITS)}"
    return None


def _labels_problem(body: dict[str, Any]) -> str | None:
    """A request's currency, metadata and external_ref, if anything is wrong with them."""
    if "currency" in body and not is_currency(body["currency"]):
        return "currency must be a code of 3 to 12 upper-case letters or digits"
    if "metadata" in body and (problem := metadata_problem(body["metadata"])) is not None:
        return problem
    if "external_ref" in body and not is_name(body["external_ref"]):
        return f"external_ref must be a string of 1 to {MAX_NAME} characters"
    return None


def _members_problem(sender: str, members: Any) -> str | None:
    """What is wrong with a linked transfer's list of members, if anything."""
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_LINKED:
        return f"transfers must be a list of 1 to {MAX_LINKED} transfers"
    receivers = set()
    for i, member in enumerate(members):
        if not isinstance(member, dict) or set(member) - {"from"} != {"to", "amount"}:
            return f"transfers[{i}] must be an object with to, amount and, optionally, from"
        to, debtor = member["to"], member.get("from")
        if not is_name(to) or ("from" in member and not is_name(debtor)):
            return f"transfers[{i}]: account names must be strings of 1 to 128 characters"
        if to == sender or to in receivers:
            return f"transfers[{i}]: each transfer goes to a different account than the others and the sender"
        if debtor is not None and debtor in (sender, to):
            return f"transfers[{i}]: from names another account than the sender and its receiver " \
                   "(leave it out for the sender's own)"
        receivers.add(to)
        if (problem := _amount_problem(member["amount"])) is not None:
            return f"transfers[{i}]: {problem}"
    if sum(m["amount"] for m in members) > MAX_AMOUNT:
        return "the transfers' total exceeds the 64-bit range"
    if all("from" in m for m in members):
        return "the sender pays at least one of the transfers (it holds the others together)"
    return None
