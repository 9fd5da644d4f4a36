"""The transfer rules: pure functions of (account state, input) -> Decision.

The package's rooms: `contract` (every request kind described once, and the parser of a
transfers.requests record), `messages` (the records between partitions and their parser),
`decision` (what deciding produces, the operator's Rules and the steps every rule shares),
`markers` (the applied-id keys of the engine's store), `request_rules` (a client request on
its deciding account's partition) and `message_rules` (a message on its account's). Adding a
request kind is one row in contract.REQUEST_KINDS plus its rule.

No I/O and no clocks: time comes from the input record's timestamp, so the
same inputs always give the same decisions (and byte-identical outputs). The
engine, the replay tool's recompute and the property tests all call these.

Semantics, per account (the one owned by the partition the record is on):
  open_account  creates the account (balance 0) in its `currency` (default USD, kept for
                good), with optional daily_limit, overdraft_limit (the balance may go
                down to -overdraft_limit; default 0) and max_balance (it may not go
                above; default none), and metadata.
  deposit       adds amount.                      -> deposited, outcome completed
  withdraw      removes amount if funds and limit -> withdrawn, outcome completed
  transfer      debits the sender if funds and limit -> debited, outcome debited,
                and queues a credit for the receiver; the receiver's partition
                then credits it (-> credited, outcome completed) or, if the
                receiver does not exist, refunds the sender (-> refunded,
                outcome rejected unknown_account).
A rejection changes no balance; it is a `rejected` event on every involved
account that exists. An outflow (withdrawal, debit, hold) needs balance +
overdraft_limit - held >= amount (else insufficient_funds) and room under the
daily limit; an inflow (deposit, credit, a linked member) must keep the balance
at most max_balance (else max_balance_exceeded) and be in the account's
currency (else currency_mismatch: a credit goes back to its sender). Money that
returns (a refund, a released hold) is never refused. A request_id already
decided on this partition is a duplicate: nothing changes.

Account rules and life (each a ledger event of its own, outcome completed):
  set_limits    changes daily_limit, overdraft_limit and/or max_balance -> limits_set.
                A lower limit never undoes what was decided: it only refuses what
                comes next. An overdraft counts toward the partition's share of the
                64-bit range (Rules.supply_cap) when granted or raised, as a deposit
                does; lowering it releases nothing (it may be in use).
  freeze        -> frozen: credits and deposits still land; withdrawals, transfers,
                holds, posts and linked transfers from it are refused account_frozen
                (a void still releases). unfreeze -> unfrozen.
  close_account only with balance, held and pending_in all 0 (else account_not_empty)
                -> closed, for good: every later request on it is refused
                account_closed and a credit in flight to it goes back to its sender.
                A refund of what it sent before closing still lands on it.
Labels: `metadata` (at most 16 string keys of up to 64 characters to strings of up
to 512) on opens, deposits, withdrawals, transfers, holds, posts, voids and linked
transfers, and `external_ref` (unique per sender, like the request id: a second
request naming it is refused duplicate_external_ref) on transfers, holds and linked
transfers, are copied into both sides' ledger events, the messages between
partitions and the outcomes.

Two-phase transfers (holds), all decided on the sender's partition:
  hold          reserves amount if the available balance (balance - held) and
                the daily limit allow (a hold counts toward the day's outflow)
                -> held, outcome held; the receiver is told (-> incoming_held
                if it exists). Nothing moves yet.
  post          moves all or part of a pending hold with the transfer's
                debit-then-credit path (-> posted, then credited or refunded);
                the rest is released (and no longer counts toward the day's
                outflow if still that day). The hold's own outcome: posted.
  void          releases a pending hold -> hold_released; the hold: voided.
  expire        written by the engine itself once a hold's deadline has passed
                (its record timestamp is the log's clock, never earlier than
                the deadline) -> expired; the hold: expired. An expire request
                before the deadline is rejected, so replay decides the same.
Linked transfers (`linked` {from, transfers: [{to, amount, [from]}, ...]}, each to a
different account): all are applied or none is. The sender reserves the total
(-> held, checked member by member, so a rejection names the member that
failed) and asks each receiver's partition to confirm it exists (link_check);
the answers (link_ack) come back to the sender, whose first refusal releases
the reservation (-> hold_released, outcome rejected naming the member) and
whose last confirmation debits the total (-> posted) and sends each member's
credit, which can no longer fail for want of a receiver. A member with its own
`from` (a payer other than the sender, such as an exchange desk's account in
another currency) is reserved on the payer's partition first (link_reserve ->
held there, or a refusal answered to the sender), which then asks the receiver;
the sender's decision moves it (link_commit -> posted on the payer, then its
credit) or releases it (link_abort -> hold_released). The sender pays at least one
member. So an exchange is one linked transfer: alice-usd pays fx-usd, fx-eur pays
alice-eur.

Posting or voiding a hold that is not pending is rejected hold_closed; posting
more than was held, hold_exceeded; a hold_id the sender never made,
unknown_hold. Available never goes below 0, and held + posted + released
equals what was reserved.

Rules that operators may change (Rules, from settings) are parameters, so
`bank replay recompute` can show what a change would have decided.
"""
from kbank.streams.decisions.contract import (MAX_DETAIL, MAX_HOLD_TIMEOUT_S, MAX_LINKED,
                                              MAX_REQUEST_BYTES, REQUEST_KINDS, REQUESTED_BY, TAGS,
                                              VERSION, Request, RequestKind, Undecodable,
                                              deciding_account, fingerprint, parse_json,
                                              parse_request)
from kbank.streams.decisions.decision import Decision, FirstDecision, Rules
from kbank.streams.decisions.markers import (credit_marker, external_ref_marker, incoming_marker,
                                             marked_request, marker_key, request_marker)
from kbank.streams.decisions.message_rules import decide_credit
from kbank.streams.decisions.messages import (MAX_MESSAGE_BYTES, BadMessage, expiry_message,
                                              message_scope, parse_message)
from kbank.streams.decisions.request_rules import decide_request, expire_hold
from kbank.streams.storekeys import EXPIRE

__all__ = ["EXPIRE", "MAX_DETAIL", "MAX_HOLD_TIMEOUT_S", "MAX_LINKED", "MAX_MESSAGE_BYTES",
           "MAX_REQUEST_BYTES", "REQUEST_KINDS", "REQUESTED_BY", "TAGS", "VERSION", "BadMessage",
           "Decision", "FirstDecision", "Request", "RequestKind", "Rules", "Undecodable",
           "credit_marker", "decide_credit", "decide_request", "deciding_account",
           "expire_hold", "expiry_message", "external_ref_marker", "fingerprint",
           "incoming_marker", "marked_request", "marker_key", "message_scope", "parse_json",
           "parse_message", "parse_request", "request_marker"]
