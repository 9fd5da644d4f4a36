"""A stateful property test of the rules under hostile input (issue 21).

Hypothesis drives one partition's rules (tests/rules_ledger.Ledger, which applies every
decision as the processor does and encodes every output) with sequences a hostile or merely
careless client can send: request ids reused across senders and across request types,
ids in the engine's old namespace (`expire:...`), the engine-only `expire` type, amounts at
0, 1 and near 2^63-1, retries with the same and with another body, timestamps that go
backwards, credits delivered late, twice or out of turn, and expiries; and the ledger
model's requests (issue 24): two currencies, overdrafts and max balances, limits changed,
accounts frozen, unfrozen and closed, metadata and external_refs, linked transfers with
members paid by other accounts. After every step the engine's own assertions hold
(Ledger.emit), every account is within its bounds and money is conserved in each currency:
deposits - withdrawals = the balances + the money in flight. At the end `bank replay
verify`'s checks pass (a closed account never moved but for refunds, no outflow below its
floor, no inflow above its cap).
"""
from __future__ import annotations

import orjson
from hypothesis import settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from kbank.streams.decisions import Rules
from kbank.streams.model import MAX_AMOUNT
from tests.rules_ledger import Ledger

NAMES = ["alice", "bob", "carol"]
CURRENCY = {"alice": "USD", "bob": "USD", "carol": "EUR"}   # carol's opening says EUR
IDS = ["t1", "t2", "h1", "expire:h1", "open-alice"]   # few, so they collide on purpose
amounts = st.one_of(st.integers(1, 1_000), st.sampled_from(
    [0, 1, MAX_AMOUNT - 1, MAX_AMOUNT, MAX_AMOUNT // 2 + 1, MAX_AMOUNT // 3]))
names = st.sampled_from(NAMES)
# mostly a fresh id; often one of a few shared ones, so that ids collide across senders
# and request types (None stands for a fresh id)
ids = st.one_of(st.none(), st.none(), st.sampled_from(IDS))
limits = st.one_of(st.none(), st.integers(0, 2_000), st.sampled_from([MAX_AMOUNT // 4]))
metadata = st.one_of(st.none(), st.dictionaries(st.sampled_from(["k", "inv", "x" * 65]),
                                                st.sampled_from(["v", "w" * 513]), max_size=3))
refs = st.one_of(st.none(), st.sampled_from(["erp-1", "erp-2"]))


def _labelled(body: dict, meta: dict | None, ref: str | None) -> dict:
    return {**body, **({"metadata": meta} if meta is not None else {}),
            **({"external_ref": ref} if ref is not None else {})}


class HostileClients(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # two partitions' share of the supply: the cap binds long before 2^63
        self.led = Ledger(Rules(supply_cap=MAX_AMOUNT // 2))
        self.sent: list[dict] = []
        self.max_overdraft: dict[str, int] = {}   # the largest overdraft each account had

    @initialize(funds=st.lists(amounts, min_size=len(NAMES), max_size=len(NAMES)))
    def open_accounts(self, funds):
        for name, amount in zip(NAMES, funds):
            self._send({"type": "open_account", "request_id": f"open-{name}", "account": name,
                        "currency": CURRENCY[name]})
            self._send({"type": "deposit", "request_id": f"dep-{name}", "account": name,
                        "amount": amount})

    def _send(self, body: dict) -> list[dict]:
        if body["request_id"] is None:
            body = {**body, "request_id": f"r{len(self.sent)}"}
        self.sent.append(body)
        outs = self.led.send(body)
        for out in outs:
            assert len(orjson.dumps(out)) < 4_096 + 16 * (64 + 512)
        for name, acct in self.led.accounts.items():
            self.max_overdraft[name] = max(self.max_overdraft.get(name, 0), acct.overdraft_limit)
        return outs

    @rule(account=names, rid=ids, limit=limits, overdraft=st.one_of(st.none(), limits),
          cap=limits, currency=st.sampled_from(["USD", "EUR", "usd"]), meta=metadata)
    def open_account(self, account, rid, limit, overdraft, cap, currency, meta):
        body = {"type": "open_account", "request_id": rid, "account": account,
                "daily_limit": limit, "max_balance": cap, "currency": currency}
        self._send(_labelled({**body, **({"overdraft_limit": overdraft} if overdraft else {})},
                             meta, None))

    @rule(account=names, rid=ids, limit=limits, overdraft=limits, cap=limits,
          which=st.sets(st.sampled_from(["daily_limit", "overdraft_limit", "max_balance"])))
    def set_limits(self, account, rid, limit, overdraft, cap, which):
        new = {"daily_limit": limit, "overdraft_limit": overdraft or 0, "max_balance": cap}
        self._send({"type": "set_limits", "request_id": rid, "account": account,
                    **{k: new[k] for k in which}})

    @rule(kind=st.sampled_from(["close_account", "freeze", "unfreeze"]), account=names, rid=ids)
    def account_state(self, kind, account, rid):
        outs = self._send({"type": kind, "request_id": rid, "account": account})
        if kind == "close_account" and outs and outs[0]["status"] == "completed" \
                and not outs[0].get("retry"):
            acct = self.led.accounts[account]
            # what others hold for it does not keep it open (issue 41): it goes back to them
            assert acct.balance == acct.held == 0, acct

    @rule(kind=st.sampled_from(["deposit", "withdraw"]), account=names, rid=ids, amount=amounts)
    def move(self, kind, account, rid, amount):
        self._send({"type": kind, "request_id": rid, "account": account, "amount": amount})

    @rule(kind=st.sampled_from(["transfer", "hold"]), sender=names, receiver=names, rid=ids,
          amount=amounts, timeout_s=st.integers(0, 5), meta=metadata, ref=refs)
    def send_money(self, kind, sender, receiver, rid, amount, timeout_s, meta, ref):
        body = {"type": kind, "request_id": rid, "from": sender, "to": receiver, "amount": amount}
        self._send(_labelled({**body, "timeout_s": timeout_s} if kind == "hold" else body,
                             meta, ref))

    @rule(kind=st.sampled_from(["post", "void", "expire"]), sender=names, rid=ids,
          hold=st.one_of(st.integers(0, 10**6), st.sampled_from(IDS)),
          amount=st.one_of(st.none(), amounts))
    def settle(self, kind, sender, rid, hold, amount):
        """Settle a hold made earlier (by this sender or another), or one of the shared ids."""
        if isinstance(hold, int):
            made = [b["request_id"] for b in self.sent if b["type"] == "hold"] or IDS
            hold = made[hold % len(made)]
        body = {"type": kind, "request_id": rid, "hold_id": hold, "from": sender}
        outs = self._send({**body, "amount": amount} if kind == "post" and amount else body)
        if kind == "expire":   # the engine's own kind: a client's is refused, always
            assert [o["status"] for o in outs] in (["rejected"], []) and all(
                o.get("reason") in ("invalid", "idempotency_conflict") for o in outs), outs

    @rule(sender=names, rid=ids, ref=refs,
          members=st.lists(st.tuples(names, amounts, st.one_of(st.none(), names)), min_size=1,
                           max_size=3, unique_by=lambda m: m[0]))
    def linked(self, sender, rid, ref, members):
        """Members paid by the sender, or by another account (`from`): an exchange."""
        self._send(_labelled({"type": "linked", "request_id": rid, "from": sender, "transfers": [
            {"to": to, "amount": n, **({"from": payer} if payer else {})}
            for to, n, payer in members if to != sender] or [{"to": "ghost", "amount": 1}]},
            None, ref))

    @rule(sender=names, rid=ids, hold=st.sampled_from(["h1", "expire:h1"]))
    def hold_in_the_engines_old_namespace(self, sender, rid, hold):
        """A hold whose id looks like the engine's, then a deposit named after its expiry:
        neither may touch the engine's own expiry of the hold."""
        self._send({"type": "hold", "request_id": hold, "from": sender, "to": NAMES[0],
                    "amount": 1, "timeout_s": 1})
        self._send({"type": "deposit", "request_id": f"expire:{hold}", "account": sender,
                    "amount": 1})

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10**6))
    def retry(self, pick):
        """The same body again: the first decision comes back, marked a retry, and nothing
        changes. (A request refused before its account is known, such as an unknown type,
        leaves no marker: it is refused afresh, just as before.)"""
        body = self.sent[pick % len(self.sent)]
        before = (len(self.led.events), len(self.led.pending), dict(self.led.accounts))
        outs = self.led.send(body)
        assert (len(self.led.events), len(self.led.pending), dict(self.led.accounts)) == before
        assert all(o.get("retry") is True or o["account"] is None for o in outs), outs

    @precondition(lambda self: self.led.pending)
    @rule(pick=st.integers(0, 10**6))
    def deliver(self, pick):
        self.led.deliver(pick)

    @precondition(lambda self: self.led.delivered)
    @rule(pick=st.integers(0, 10**6))
    def redeliver(self, pick):
        self.led.deliver(pick, again=True)

    @rule(step_ms=st.sampled_from([-86_400_000, -1_000, 1, 2_500, 6_000, 86_400_000]))
    def clock(self, step_ms):
        """The broker's clock mostly goes forward; across a leader change it may step back."""
        self.led.ts += step_ms

    @rule()
    def expire_due(self):
        self.led.expire_due()

    @invariant()
    def accounts_within_bounds(self):
        for name, acct in self.led.accounts.items():
            assert -MAX_AMOUNT <= acct.balance <= MAX_AMOUNT and 0 <= acct.held, acct
            # what is reserved or gone out was checked against the overdraft of its day
            assert acct.balance - acct.held >= -self.max_overdraft[name], acct
            assert 0 <= acct.pending_in <= MAX_AMOUNT, acct
            assert 0 <= acct.spent <= MAX_AMOUNT, acct
        assert 0 <= self.led.supply <= self.led.rules.supply_cap
        assert not self.led.dead_letters, self.led.dead_letters

    @invariant()
    def money_is_conserved(self):
        """In each currency on its own; the supply also counts the overdrafts granted."""
        balances: dict[str, int] = {}
        for acct in self.led.accounts.values():
            balances[acct.currency] = balances.get(acct.currency, 0) + acct.balance
        flows = self.led.deposits_minus_withdrawals_by_currency()
        in_flight = self.led.in_flight_by_currency()
        for cur in set(balances) | set(flows) | set(in_flight):
            assert flows.get(cur, 0) == balances.get(cur, 0) + in_flight.get(cur, 0), cur
        assert sum(flows.values()) <= self.led.supply

    def teardown(self):
        """Everything delivered and every hold expired: the ledger verifies."""
        self.led.deliver_all()
        # past every deadline (the clock may have stepped back days since a hold was made)
        self.led.ts = max([self.led.ts] + [h.deadline + 1 for h in self.led.holds.values()])
        self.led.expire_due()
        self.led.deliver_all()
        report = self.led.verify()
        assert report.ok, report.render()
        assert self.led.in_flight() == 0
        assert all(a.held == 0 and a.pending_in == 0 for a in self.led.accounts.values()), \
            self.led.accounts


HostileClients.TestCase.settings = settings(max_examples=500, stateful_step_count=40,
                                            deadline=None)
test_hostile_clients = HostileClients.TestCase
