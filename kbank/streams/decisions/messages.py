"""The messages between partitions (transfers.credits): each kind's fields, the parser that
refuses any record the engine could not have written, and the scope a message belongs to."""
from __future__ import annotations

from typing import Any

import orjson
from kbank.streams.decisions.contract import (_CHECKED_LABELS, MAX_LINKED, MAX_REQUEST_BYTES,
                                              REQUESTED_BY, TAGS, _is_int, _labels_problem)

from kbank.streams.model import (CREDIT, HOLD_NOTICE, LINK_ABORT, LINK_ACK, LINK_CHECK, LINK_COMMIT,
                                 LINK_RESERVE, MAX_AMOUNT, MAX_NAME, REFUND, REJECT_NOTICE,
                                 RELEASE_NOTICE, Hold, is_name)
from kbank.streams.storekeys import EXPIRE


def expiry_message(hold_id: str, hold: Hold) -> dict[str, Any]:
    """What the engine writes to its own transfers.credits partition once a hold's deadline
    has passed: only the engine writes that topic, so no client can expire a hold, or
    forestall its expiry by taking the id first."""
    return {"kind": EXPIRE, "request_id": hold_id, "account": hold.sender, "counterparty": None,
            "amount": hold.amount}


class BadMessage(ValueError):
    """A transfers.credits record that is not one the engine writes: it is dead-lettered."""


# messages that go back to the sender (their `account` is the request's scope)
_TO_SENDER = frozenset({REFUND, LINK_ACK, EXPIRE})


def message_scope(msg: dict[str, Any]) -> str:
    """The deciding account of the request a transfers.credits message belongs to (the
    coordinator, `link`, for the credit and refund of a member another account paid)."""
    if "link" in msg:
        return msg["link"]
    return msg["account"] if msg["kind"] in _TO_SENDER else msg["counterparty"]


_MESSAGE_FIELDS = {
    CREDIT: ({"kind", "request_id", "account", "counterparty", "amount", "currency"},
             {"hold_id", "held", "index", "link"}),
    REFUND: ({"kind", "request_id", "account", "counterparty", "amount", "reason"},
             {"index", "link"}),
    REJECT_NOTICE: ({"kind", "request_id", "account", "counterparty", "amount", "reason"}, set()),
    HOLD_NOTICE: ({"kind", "request_id", "account", "counterparty", "amount", "hold_id",
                   "currency"}, set()),
    RELEASE_NOTICE: ({"kind", "request_id", "account", "counterparty", "amount", "hold_id"},
                     set()),
    LINK_CHECK: ({"kind", "request_id", "account", "counterparty", "amount", "index",
                  "currency"}, set()),
    LINK_ACK: ({"kind", "request_id", "account", "counterparty", "amount", "index", "ok"},
               {"reason"}),
    EXPIRE: ({"kind", "request_id", "account", "counterparty", "amount"}, set()),
    LINK_RESERVE: ({"kind", "request_id", "account", "counterparty", "amount", "index", "to"},
                   set()),
    LINK_COMMIT: ({"kind", "request_id", "account", "counterparty", "amount", "index"}, set()),
    LINK_ABORT: ({"kind", "request_id", "account", "counterparty", "amount", "index"}, set()),
}
for _kind, (_, _optional) in _MESSAGE_FIELDS.items():
    if _kind != EXPIRE:   # the engine's own: no one requested it
        _optional.update((REQUESTED_BY, *TAGS))
MAX_MESSAGE_BYTES = 2 * MAX_REQUEST_BYTES   # a message copies a request's labels, plus a little


def parse_message(key: bytes | None, value: bytes | None) -> dict[str, Any]:
    """Validate a transfers.credits record field by field; raises BadMessage."""
    if value is None or len(value) > MAX_MESSAGE_BYTES:
        raise BadMessage("empty or oversized message")
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or msg.get("kind") not in _MESSAGE_FIELDS:
        raise BadMessage("not a message of a known kind")
    required, optional = _MESSAGE_FIELDS[msg["kind"]]
    if not required <= set(msg) <= required | optional:
        raise BadMessage(f"fields of a {msg['kind']} must be {sorted(required)} "
                         f"(and may be {sorted(optional)})")
    names = ["request_id", "account"] + [n for n in ("hold_id", "to", "link") if n in msg]
    if msg["kind"] != EXPIRE:
        names.append("counterparty")
    elif msg["counterparty"] is not None:
        raise BadMessage("an expire has no counterparty")
    if not all(is_name(msg[n]) for n in names):
        raise BadMessage(f"{', '.join(names)} must be strings of 1 to {MAX_NAME} characters")
    if key != msg["account"].encode():
        raise BadMessage("message key does not match its account")
    for n in ("amount", "held"):
        if n in msg and not (_is_int(msg[n]) and 0 <= msg[n] <= MAX_AMOUNT):
            raise BadMessage(f"{n} must be an integer from 0 to 2^63-1")
    if "index" in msg and not (_is_int(msg["index"]) and 0 <= msg["index"] < MAX_LINKED):
        raise BadMessage(f"index must be an integer from 0 to {MAX_LINKED - 1}")
    if "reason" in msg and not (isinstance(msg["reason"], str) and len(msg["reason"]) <= 64):
        raise BadMessage("reason must be a short string")
    if "ok" in msg and not isinstance(msg["ok"], bool):
        raise BadMessage("ok must be true or false")
    if REQUESTED_BY in msg and not is_name(msg[REQUESTED_BY]):
        raise BadMessage(f"requested_by must be a string of 1 to {MAX_NAME} characters")
    if msg.keys() & _CHECKED_LABELS and (problem := _labels_problem(msg)) is not None:
        raise BadMessage(problem)
    return msg
