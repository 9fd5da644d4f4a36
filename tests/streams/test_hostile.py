"""Hostile input through the real engine on the real broker (issue 21): ids reused across
senders, amounts at the 64-bit edge, engine-only requests, oversized records. No worker may
restart and `bank replay verify` must pass."""
from __future__ import annotations

import orjson

from streams.model import MAX_AMOUNT, request_key
from tests.workload import Workload, assert_invariants


def test_hostile_requests_change_nothing_they_should_not(settings, pool_factory):
    engine = pool_factory(settings, 1)
    wl = Workload(settings)
    try:
        wl.open_accounts(["alice", "bob", "carol", "dave"], 1_000)
        # two honest clients, one request id: two requests, both applied
        wl.send({"type": "transfer", "request_id": "t1", "from": "alice", "to": "carol", "amount": 500})
        wl.send({"type": "transfer", "request_id": "t1", "from": "bob", "to": "carol", "amount": 500})
        # amounts at the edge: the partition's share of the 64-bit supply refuses them
        for i, name in enumerate(["alice", "bob", "dave"]):
            wl.send({"type": "deposit", "request_id": f"huge-{i}", "account": name,
                     "amount": MAX_AMOUNT})
        # engine-only requests and ids
        wl.sender.send_raw(b"alice", orjson.dumps(
            {"type": "expire", "request_id": "x", "hold_id": "h", "from": "alice"}))
        wl.request_ids.append(request_key("", "x"))   # no account decides it: no scope
        wl.send({"type": "deposit", "request_id": "expire:h", "account": "dave", "amount": 1})
        # a retry and a conflicting reuse
        wl.send({"type": "deposit", "request_id": "dep-dave", "account": "dave", "amount": 1_000})
        wl.send({"type": "deposit", "request_id": "dep-dave", "account": "dave", "amount": 999})
        # oversized: rejected with a reason, not copied
        big = orjson.dumps({"type": "deposit", "request_id": "big", "account": "dave",
                            "amount": 1, "pad": "x" * 40_000})
        wl.sender.send_raw(b"dave", big)
        wl.request_ids.append(request_key("dave", "big"))
        wl.sender.flush()
        assert wl.wait(120), "every request gets an outcome"
        status = wl.watcher.status
        assert status[request_key("alice", "t1")] == status[request_key("bob", "t1")] == "completed"
        assert {status[request_key(n, f"huge-{i}")] for i, n in enumerate(["alice", "bob", "dave"])} \
            == {"rejected"}
        assert status[request_key("", "x")] == "rejected"
        assert status[request_key("dave", "expire:h")] == "completed"
        assert status[request_key("dave", "big")] == "rejected"
        wl.deposits += 1   # the expire:h deposit
    finally:
        wl.close()
    report = assert_invariants(settings, wl, drained_by=engine)
    assert report.total_balance == 4 * 1_000 + 1
    assert all(proc.poll() is None for proc in engine.procs.values()), "no worker died"
