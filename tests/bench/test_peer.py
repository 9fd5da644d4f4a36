"""The peer `bank bench --peer quix` compares the engine with (issue 44): its rules keep
money (a transfer the balance does not cover is refused, a request id applies once), and
the comparison's summary is the median of each side's rounds. Pure: the pipeline's steps run
on a dict standing for Quix's state, without Quix (which the bench installs in a virtualenv
of its own) or a broker; the bench itself checks each side's outcomes against the backlog."""
from __future__ import annotations

import random
from collections import defaultdict

from kbank.bench.backlog import backlog_transfers
from kbank.bench.peer import summary
from kbank.bench.quix_peer import credit, debit


class DictState:
    """Quix's per-key State, as the pipeline uses it (get with a default, set)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)

    def set(self, key: str, value: object) -> None:
        self.values[key] = value


def _run(requests: list[dict]) -> tuple[dict[str, DictState], list[dict]]:
    """The pipeline's two steps in order, each keyed as Quix keys them."""
    states: dict[str, DictState] = defaultdict(DictState)
    outcomes = []
    for request in requests:
        payer = request.get("from", request.get("account"))
        first = debit(request, states[payer])
        if first["status"] == "debited":
            outcomes.append(credit(first, states[first["to"]]))
        else:
            outcomes.append(first)
    return states, outcomes


def test_the_peer_moves_money_once_and_refuses_what_is_not_covered():
    requests = [{"type": "deposit", "request_id": "d1", "account": "a", "amount": 10},
                {"type": "transfer", "request_id": "t1", "from": "a", "to": "b", "amount": 7},
                {"type": "transfer", "request_id": "t1", "from": "a", "to": "b", "amount": 7},
                {"type": "transfer", "request_id": "t2", "from": "a", "to": "b", "amount": 4},
                {"type": "transfer", "request_id": "t3", "from": "b", "to": "a", "amount": 2}]
    states, outcomes = _run(requests)
    assert [o["status"] for o in outcomes] == ["completed", "completed", "duplicate", "refused",
                                               "completed"]
    assert states["a"].get("balance") == 5 and states["b"].get("balance") == 5


def test_the_peer_conserves_money_over_a_random_backlog():
    rng = random.Random(5)
    accounts = 50
    requests = [{"type": "deposit", "request_id": f"d{i}", "account": f"a{i}", "amount": 20}
                for i in range(accounts)]
    for rid, payer, receiver in backlog_transfers(accounts, 3_000, seed=9):
        requests.append({"type": "transfer", "request_id": rid, "from": payer, "to": receiver,
                         "amount": rng.randint(1, 15)})
    requests += requests[accounts:accounts + 100]   # delivered twice: applied once
    states, outcomes = _run(requests)
    assert sum(s.get("balance", 0) for s in states.values()) == 20 * accounts
    assert all(s.get("balance", 0) >= 0 for s in states.values())
    statuses = [o["status"] for o in outcomes]
    assert statuses.count("duplicate") == 100
    assert statuses.count("refused") > 0 and statuses.count("completed") > accounts


def test_the_backlog_is_the_same_for_both_sides_and_never_self_paying():
    first = list(backlog_transfers(100, 1_000, seed=3))
    assert first == list(backlog_transfers(100, 1_000, seed=3))
    assert len({rid for rid, _, _ in first}) == 1_000
    assert all(payer != receiver for _, payer, receiver in first)


def test_the_summary_is_the_median_of_each_sides_rounds_and_their_ratio():
    def run(side: str, workers: int, rate: float, cpu: float) -> dict:
        return {"side": side, "workers": workers, "drain_transfers_per_s": rate,
                "cpu_us_per_transfer": {side: cpu, "broker": 10.0}}
    runs = [run("engine", 1, r, c) for r, c in ((30.0, 50.0), (10.0, 70.0), (20.0, 60.0))] + \
           [run("quix", 1, r, c) for r, c in ((5.0, 90.0), (15.0, 80.0), (10.0, 100.0))] + \
           [run("engine", 2, 40.0, 55.0), run("quix", 2, 16.0, 95.0)]
    rows = summary(runs)
    assert [row["workers"] for row in rows] == [1, 2]
    assert rows[0]["engine"]["transfers_per_s"] == 20.0
    assert rows[0]["quix"]["transfers_per_s"] == 10.0
    assert rows[0]["ratio"] == 2.0 and rows[1]["ratio"] == 2.5
    assert rows[0]["engine"]["cpu_us_per_transfer"] == {"engine": 60.0, "broker": 10.0}
    assert rows[0]["quix"]["rounds"] == [5.0, 15.0, 10.0]
