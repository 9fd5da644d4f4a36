"""The engine store's key layout, in one place (issue 43): what every key of a partition's
RocksDB store and of engine.changelog holds. Written to disk and to the changelog, so a
prefix never changes meaning; `check_layout` (run at import, and by a test) refuses two
prefixes where one begins the other, so a new one cannot read or delete another's keys.

State (in the store and, but for the expiry index, in engine.changelog):

    a:<account>        the account's state (Account json); compaction keeps the latest, so a
                       restore is bounded by the number of accounts, not the history
    h:<hold key>       a hold's state (Hold json), written when made and when settled
    s:                 the partition's money supply (deposits - withdrawals + overdraft
                       limits granted), which Rules.supply_cap bounds
    l:                 the hash of the partition's last ledger event (model.chain_event)
    t:                 the partition's clock: the latest input timestamp it applied
    b:<c0>:<r0>[:<n>]  one record per batch (changelog.BatchRecord): its input ranges, its
                       clock and the ids it applied; tombstoned once the id window lets none
                       of its ids count again
    z:<clock>:<batch>  the store only: the expiry index (what each batch wrote, by the clock
                       after it), so expired markers, holds and batch records are deleted
    __changelog        the store only: the next changelog offset to read
    __position         the store only: the input offsets [credits, requests] it reflects

Applied-id markers (one per kind, deciding account and id: decisions/markers.py marker_key puts the
id first, then the scope, then the id's length), each mapped to its value stamped with its
input's timestamp (engine/apply.py); in the changelog they live in their batch's record,
but for the hold notice's, which lives under its own key as long as the hold:

    r:  a client request (its value: the FirstDecision)     e:  an external_ref the sender used
    c:  a credit   f:  a refund   n:  a rejection notice (no longer sent; kept for those in
    flight)   i:  a hold notice (the receiver's pending-in)   u:  a release notice
    x:  an expiry; a linked transfer's member messages: C: F: k: y: R: P: A: then
    "<member index>:" (credit, refund, check, ack, reserve, commit, abort)
"""
from __future__ import annotations

from kbank.streams.model import (CREDIT, HOLD_NOTICE, LINK_ABORT, LINK_ACK, LINK_CHECK,
                                 LINK_COMMIT, LINK_RESERVE, REFUND, REJECT_NOTICE,
                                 RELEASE_NOTICE, MessageKind)

# the engine's own message (on transfers.credits), never a client's request
EXPIRE = MessageKind("expire")

# state
ACCOUNT_PREFIX = b"a:"
HOLD_PREFIX = b"h:"
BATCH_PREFIX = b"b:"
SUPPLY_KEY = b"s:"
CHAIN_KEY = b"l:"
CLOCK_KEY = b"t:"
EXPIRY_PREFIX = b"z:"
CHANGELOG_OFFSET_KEY = b"__changelog"
POSITION_KEY = b"__position"

# applied-id markers (strings; stored as their UTF-8)
REQUEST_MARKER = "r:"
EXTERNAL_REF_MARKER = "e:"
MESSAGE_MARKER = {CREDIT: "c:", REFUND: "f:", REJECT_NOTICE: "n:", HOLD_NOTICE: "i:",
                  RELEASE_NOTICE: "u:", EXPIRE: "x:"}
MEMBER_MARKER = {CREDIT: "C:", REFUND: "F:", LINK_CHECK: "k:", LINK_ACK: "y:",
                 LINK_RESERVE: "R:", LINK_COMMIT: "P:", LINK_ABORT: "A:"}   # + "<index>:"
# a hold notice's marker lives as long as the hold (never expires with the id window), and
# under its own key in the changelog
INCOMING_MARKER = MESSAGE_MARKER[HOLD_NOTICE]
INCOMING_PREFIX = INCOMING_MARKER.encode()


def layout() -> dict[str, bytes]:
    """Every key and prefix of the store, by what it holds."""
    named = {"account": ACCOUNT_PREFIX, "hold": HOLD_PREFIX, "batch": BATCH_PREFIX,
             "supply": SUPPLY_KEY, "chain": CHAIN_KEY, "clock": CLOCK_KEY,
             "expiry index": EXPIRY_PREFIX, "changelog offset": CHANGELOG_OFFSET_KEY,
             "position": POSITION_KEY, "request marker": REQUEST_MARKER.encode(),
             "external_ref marker": EXTERNAL_REF_MARKER.encode()}
    named.update({f"{kind} marker": p.encode() for kind, p in MESSAGE_MARKER.items()})
    named.update({f"member {kind} marker": p.encode() for kind, p in MEMBER_MARKER.items()})
    return named


def check_layout(named: dict[str, bytes]) -> None:
    """Refuse two keys or prefixes of which one begins the other (they would share keys)."""
    items = sorted(named.items(), key=lambda item: item[1])
    for (name_a, a), (name_b, b) in zip(items, items[1:]):
        if b.startswith(a):
            raise AssertionError(f"store keys collide: {name_a} {a!r} begins {name_b} {b!r}")


check_layout(layout())
