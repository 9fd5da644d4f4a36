"""Applied ids are remembered for a window (BANK_ID_RETENTION_S): the rule, and the store that
forgets them.

The store deletes what the rule can never count again, so a store that forgets (RocksDB,
as the engine runs) and one that keeps everything (MemoryState, as recompute runs) must
decide every input the same; and a restore from the changelog, its expired batch records
gone, must decide the same as the store it replaces."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson

from kbank.streams.decisions import Rules, request_marker
from kbank.streams.engine.apply import (MemoryState, credit_decision, expiry_horizon, record,
                                        request_decision, stamp)
from kbank.streams.engine.changelog import BatchRecord, hold_key
from kbank.streams.engine.state import PartitionStore
from kbank.streams.decisions import parse_message
from kbank.streams.model import Position, request_key
from kbank.streams.partitioning import partition_for
from kbank.replay.ledger import LedgerFold
from kbank.replay.recompute import events_by_account, simulate
from kbank.replay.views import compare, rebuild
from kbank.replay.verify import LedgerChecks, VerifyReport
from kbank.streams import topics
from kbank.streams.client import read_topic
from kbank.streams.storage import StoreBudget
from tests.rules_ledger import Ledger, opened
from tests.http import current_key, request
from tests.workload import Workload, assert_invariants, ledger, status_path, wait_until

WINDOW_MS = 10_000
RULES = Rules(id_window_ms=WINDOW_MS)
T0 = 1_764_000_000_000
POS = Position("transfers.requests", 0, 0)


def _decide_all(state, requests: list[tuple[dict, int]]) -> list[bytes]:  # noqa: ANN001
    """Decide each (request, ts), then deliver its messages (every account on one partition):
    the outcomes, encoded."""
    outcomes: list[bytes] = []
    queue: list[tuple[bytes, bytes, int]] = []
    for body, ts in requests:
        key = (body.get("from") or body["account"]).encode()
        queue.append((key, orjson.dumps(body), ts))
        while queue:
            key, value, at = queue.pop(0)
            if value.startswith(b"{\"kind\""):
                decision = credit_decision(state, parse_message(key, value), at, POS, RULES)
            else:
                decision = request_decision(state, key, value, at, POS, RULES)
            out = record(state, decision, at)
            outcomes += [v for _, v in out.outcomes]
            queue += [(k, v, at) for k, v in out.messages]
    return outcomes


def _history() -> list[tuple[dict, int]]:
    """Opens, a deposit retried within and re-used after the window, a transfer, and a hold
    that stays pending past the window (its retry must still be a retry)."""
    steps = [({"type": "open_account", "request_id": "o1", "account": "alice"}, T0),
             ({"type": "open_account", "request_id": "o2", "account": "bob"}, T0),
             ({"type": "deposit", "request_id": "d1", "account": "alice", "amount": 100}, T0 + 1),
             ({"type": "hold", "request_id": "h1", "from": "alice", "to": "bob", "amount": 30,
               "timeout_s": 3_600}, T0 + 2),
             ({"type": "hold", "request_id": "h2", "from": "alice", "to": "bob", "amount": 1,
               "timeout_s": 3_600}, T0 + 3),
             ({"type": "void", "request_id": "v1", "from": "alice", "hold_id": "h2"}, T0 + 4),
             ({"type": "void", "request_id": "v2", "from": "alice", "hold_id": "h2"}, T0 + 4_000),
             ({"type": "deposit", "request_id": "d1", "account": "alice", "amount": 100}, T0 + 5_000)]
    later = T0 + WINDOW_MS + WINDOW_MS // 7 + 1
    steps += [({"type": "transfer", "request_id": "t1", "from": "alice", "to": "bob", "amount": 5},
               later + i * 1_000) for i in range(3)]
    steps += [({"type": "deposit", "request_id": "d1", "account": "alice", "amount": 100}, later + 5_000),
              ({"type": "hold", "request_id": "h1", "from": "alice", "to": "bob", "amount": 30,
                "timeout_s": 3_600}, later + 5_000),
              ({"type": "void", "request_id": "v3", "from": "alice", "hold_id": "h2"}, later + 6_000)]
    return steps


def test_the_rule_counts_an_id_for_its_window_and_a_pending_hold_for_as_long_as_it_lives():
    state = MemoryState()
    outcomes = [orjson.loads(o) for o in _decide_all(state, _history())]
    deposits = [o for o in outcomes if o["request_id"] == "d1"]
    # the first, its retry (the first decision again), the re-use after the window: new
    assert [o["status"] for o in deposits] == ["completed", "completed", "completed"]
    assert state.accounts["alice"].balance == 100 + 100 - 5
    holds = [o for o in outcomes if o["request_id"] == "h1"]
    assert [o["status"] for o in holds] == ["held", "held"]
    assert state.accounts["alice"].held == 30, "a retried hold after the window made no second hold"
    # a settled hold: closed within the window after it settled, then forgotten
    assert [(o["status"], o.get("reason")) for o in outcomes if o["request_id"] in ("v2", "v3")] \
        == [("rejected", "hold_closed"), ("rejected", "unknown_hold")]
    # t1 three times within its window: applied once, its retries told the first decision
    assert [o["status"] for o in outcomes if o["request_id"] == "t1"] == [
        "debited", "completed", "debited", "debited"]
    assert state.accounts["bob"].balance == 5


def _store_run(path: str, steps: list[tuple[dict, int]], per_batch: int = 2,
               horizon=lambda clock: expiry_horizon(clock, RULES)) -> tuple[  # noqa: ANN001
        list[bytes], PartitionStore, list[tuple[bytes, bytes | None]]]:
    """The steps through a RocksDB store in batches, expiring after each as the processor
    does; the outcomes, the store and the changelog it would have written (ids and holds)."""
    store = PartitionStore(path, StoreBudget(64))
    outcomes: list[bytes] = []
    changelog: list[tuple[bytes, bytes | None]] = []
    for b in range(0, len(steps), per_batch):
        outcomes += _decide_all(store, steps[b:b + per_batch])
        changelog += [(key, None) for key in store.expire(horizon(store.clock()), 100)]
        _, marks, holds = store.changes()
        changelog += [(hold_key(key), orjson.dumps(hold.to_json())) for key, hold in holds.items()]
        batch = BatchRecord((0, 0), (b, b + per_batch), dict(marks), None, store.clock())
        store.note_batch_records([batch.key])
        changelog.append((batch.key, batch.encode()))
        store.commit(len(changelog), (0, b + per_batch))
    return outcomes, store, changelog


def test_a_store_that_forgets_decides_as_one_that_keeps_everything(tmp_path):
    steps = _history()
    kept = _decide_all(MemoryState(), steps)
    for per_batch in (1, 3):
        forgot, store, _ = _store_run(str(tmp_path / f"b{per_batch}"), steps, per_batch)
        assert forgot == kept
        store.close()
    forgot, store, changelog = _store_run(str(tmp_path / "p0"), steps)
    assert forgot == kept
    d1 = request_marker("alice", "d1")
    assert store.applied(d1) == stamp(store.applied(d1).split("|", 1)[1], T0 + WINDOW_MS
                                      + WINDOW_MS // 7 + 1 + 5_000), "the re-use's marker"
    assert store.applied(request_marker("alice", "o1")) is None, "expired and deleted"
    assert store.applied(request_marker("alice", "h1")) is not None, "its hold is pending"
    assert store.hold(request_key("alice", "h2")) is None, "settled a window ago: deleted"
    assert store.hold(request_key("alice", "h1")).state == "pending"
    tombstones = [key for key, value in changelog if value is None]
    assert tombstones and all(key.startswith(b"b:") or key == b"h:" + request_key("alice", "h2").encode()
                              for key in tombstones)
    assert b"h:" + request_key("alice", "h2").encode() in tombstones
    store.close()


def test_negative_control_a_store_that_forgets_at_the_clock_decides_otherwise(tmp_path):
    """Deleting markers as soon as they are stamped (ignoring the window) changes decisions:
    the equality above depends on the horizon."""
    steps = _history()
    forgot, store, _ = _store_run(str(tmp_path / "p0"), steps, 1, horizon=lambda clock: clock)
    assert forgot != _decide_all(MemoryState(), steps)
    store.close()


def test_a_restore_after_expiry_decides_as_the_store_it_replaces(tmp_path):
    steps = _history()
    _, store, changelog = _store_run(str(tmp_path / "p0"), steps)
    compacted = {key: value for key, value in changelog}   # the latest per key, as compaction
    restored = PartitionStore(str(tmp_path / "restored"), StoreBudget(64))
    restored.apply_changelog([(k, v) for k, v in changelog if compacted[k] is not None
                              or v is None], len(changelog))
    for marker in (request_marker("alice", "d1"), request_marker("alice", "h1"),
                   request_marker("alice", "o1"), request_marker("bob", "o2")):
        assert restored.applied(marker) == store.applied(marker), marker
    assert restored.applied(request_marker("alice", "h1")) is not None
    for hold_id in ("h1", "h2"):
        assert restored.hold(request_key("alice", hold_id)) == store.hold(request_key("alice", hold_id))
    assert restored.clock() == 0 and store.clock() == steps[-1][1]   # t: is its own record
    store.close()
    restored.close()


def _reused_after_the_window(window_ms: int) -> "Ledger":
    """A transfer and a hold, each re-used (same ids, same bodies) after a 10 s window."""
    led = opened(("alice", 1_000), ("bob", 0), rules=Rules(id_window_ms=window_ms))
    transfer = {"type": "transfer", "request_id": "t1", "from": "alice", "to": "bob", "amount": 5}
    hold = {"type": "hold", "request_id": "h1", "from": "alice", "to": "bob", "amount": 7,
            "timeout_s": 60}
    for _ in range(2):
        led.send(transfer)
        led.send(hold)
        led.send({"type": "void", "request_id": f"v{led.ts}", "from": "alice", "hold_id": "h1"})
        led.deliver_all()
        led.ts += WINDOW_MS + WINDOW_MS // 7 + 1
    return led


def test_verify_counts_an_id_re_used_after_the_window_as_a_new_request():
    led = _reused_after_the_window(WINDOW_MS)
    assert led.accounts["bob"].balance == 10, "applied twice: once per window"
    report = led.verify()
    assert report.violations == [] and report.applied_twice == 0, report.render()
    assert report.holds["made"] == 2 and report.holds["hold_released"] == 2, report.holds


def test_negative_control_verify_with_a_longer_window_names_the_second_use():
    """The same ledger checked as if the window were longer: t1 and h1 applied twice."""
    led = _reused_after_the_window(WINDOW_MS)
    led.rules = Rules(id_window_ms=10 * WINDOW_MS)
    report = led.verify()
    assert report.applied_twice >= 2
    assert any("request" in v and "t1" in v for v in report.violations), report.violations


# -- the engine over the broker, with a one-second window --------------------------------

def _deposits_of(settings, request_id: str) -> list[dict]:  # noqa: ANN001
    return [e for acct in ledger(settings).accounts.values()
            for e in map(orjson.loads, acct.events)
            if e["kind"] == "deposited" and e["request_id"] == request_id]


def _expired_batch_records(settings) -> int:  # noqa: ANN001
    return sum(1 for msg in read_topic(settings, settings.topic(topics.CHANGELOG))
               if msg.key().startswith(b"b:") and msg.value() is None)


def _past_the_window(settings, wl, since_ts: int, window_ms: int) -> None:  # noqa: ANN001
    """Deposit to bob until the broker stamps one a window and its margin past since_ts (the
    broker's clock, not this one, decides)."""
    def stamped_past() -> bool:
        request_id = f"fill-{len(wl.request_ids)}"
        wl.send({"type": "deposit", "request_id": request_id, "account": "bob", "amount": 1})
        wl.deposits += 1
        wl.sender.flush()
        assert wl.wait(60)
        latest = max(e["ts"] for e in _deposits_of(settings, request_id))
        return latest >= since_ts + window_ms + window_ms // 7 + 1
    wait_until(stamped_past, 60, "the broker's clock to pass the window", poll_s=0.2)


def test_the_engine_forgets_ids_after_the_window_and_restore_verify_and_recompute_agree(
        settings, pool_factory, views_factory, tmp_path):
    settings = replace(settings, id_retention_s=1)
    window_ms = 1_000
    pool = pool_factory(settings, 1)
    url = views_factory(settings, 1).url("0")
    wl = Workload(settings)
    deposit = {"type": "deposit", "request_id": "d1", "account": "alice", "amount": 10}
    try:
        wl.open_accounts(["alice", "bob"], 1_000)
        wl.send(deposit, duplicate=True)      # within the window: applied once
        wl.deposits += 10
        wl.sender.flush()
        assert wl.wait(60)
        first = _deposits_of(settings, "d1")
        assert len(first) == 1
        _past_the_window(settings, wl, first[0]["ts"], window_ms)
        wl.send(deposit)                      # after it: a new request
        wl.deposits += 10
        wl.sender.flush()
        wait_until(lambda: len(_deposits_of(settings, "d1")) == 2, 60, "d1 applied anew")
        _past_the_window(settings, wl, max(e["ts"] for e in _deposits_of(settings, "d1")), window_ms)
        wait_until(lambda: _expired_batch_records(settings) > 0, 60,
                   "the engine to write tombstones for expired batch records")
        # a worker with no local state restores from the changelog with its tombstones
        pool.stop_all()
        pool_factory(replace(settings, state_dir=str(tmp_path / "fresh")), 1)
        _past_the_window(settings, wl, max(e["ts"] for e in _deposits_of(settings, "d1")), window_ms)
        wl.send(deposit)
        wl.deposits += 10
        wl.sender.flush()
        wait_until(lambda: len(_deposits_of(settings, "d1")) == 3, 60, "d1 applied a third time")
        third = max(e["ts"] for e in _deposits_of(settings, "d1"))
        # the views: d1's status is its third use's; open-alice's, long final, is forgotten
        # once outcomes on its partition move the views' clock and their sweep past it
        def shows_third_use() -> bool:   # (the second's status may be swept before: 404)
            resp = request("GET", url + status_path(request_key("alice", "d1")))
            return resp.status == 200 and resp.json()["since"] == third
        wait_until(shows_third_use, 30, "the views to show d1's third use")
        opened_key = request_key("alice", "open-alice")
        same_partition = (f"fill-p-{i}" for i in range(10**6)
                          if partition_for(request_key("bob", f"fill-p-{i}").encode(), 8)
                          == partition_for(opened_key.encode(), 8))

        def forgotten() -> bool:
            wl.send({"type": "deposit", "request_id": next(same_partition), "account": "bob",
                     "amount": 1})
            wl.deposits += 1
            wl.sender.flush()
            return request("GET", url + status_path(opened_key)).status == 404
        wait_until(forgotten, 60, "the views to forget open-alice's status", poll_s=0.2)
        assert wl.wait(60)
    finally:
        wl.close()
    report = assert_invariants(settings, wl)
    assert report.applied_twice == 0
    # recompute re-runs the live order (engine.batches) through a state that forgets nothing
    rules = Rules.from_settings(settings, settings.partitions)
    same = simulate(settings, rules, settings.partitions, show_progress=False)
    assert events_by_account(same.events) == {name: acct.events for name, acct
                                              in ledger(settings).accounts.items()}
    # negative control: the same log under a longer window is d1 applied three times
    longer = LedgerChecks(100 * window_ms)
    fold = LedgerFold()
    for msg in read_topic(settings, settings.topic(topics.LEDGER)):
        ev = fold.apply(msg.value())
        if ev is not None:
            longer.add(ev, fold.accounts[ev["account"]])
    vr = VerifyReport()
    longer.finish(fold, vr)
    assert vr.applied_twice == 1 and any("d1" in v and "3 times" in v for v in vr.violations), vr.violations
    # the views rebuilt from the log forget what the live ones may, and agree with them
    rebuilt = rebuild(settings, str(tmp_path / "rebuilt"), show_progress=False)
    assert opened_key not in rebuilt.status
    assert asyncio.run(compare(rebuilt, url, settings.partitions, current_key(),
                               show_progress=False)) == []


def test_a_credit_copy_older_than_the_window_is_dead_lettered_not_applied():
    led = opened(("alice", 100), ("bob", 0), rules=Rules(id_window_ms=WINDOW_MS))
    led.send({"type": "transfer", "request_id": "t1", "from": "alice", "to": "bob", "amount": 5})
    led.deliver_all()
    led.ts += WINDOW_MS // 2
    led.deliver(0, again=True)          # a copy within the window: its marker says applied
    assert led.dead_letters == [] and led.accounts["bob"].balance == 5
    led.ts += WINDOW_MS + WINDOW_MS // 7
    led.send({"type": "deposit", "request_id": "d9", "account": "bob", "amount": 1})  # the clock moves
    led.deliver(0, again=True)          # a copy past it: its marker may be gone, so refused
    assert len(led.dead_letters) == 1 and "can no longer be told" in led.dead_letters[0]
    assert led.accounts["bob"].balance == 6, "no credit minted"


def test_expiry_keeps_the_id_of_a_pending_linked_transfer_first_told_accepted(tmp_path):
    """A linked transfer's first decision is `accepted`, not `held`: its id must still be
    kept while its reservation is pending, and go once that is settled."""
    from kbank.streams.model import Hold

    store = PartitionStore(str(tmp_path / "p0"), StoreBudget(64))
    marker, key = request_marker("alice", "l1"), request_key("alice", "l1")
    store.mark_applied(marker, stamp("fp accepted ", T0))
    store.put_hold(key, Hold("alice", "", 7, 0, 1, "pending", [["bob", 7]]))
    store.advance_clock(T0)
    store.note_batch_records([b"b:0:0"])
    store.commit(1, (0, 1))
    store.advance_clock(T0 + 2 * WINDOW_MS)
    horizon = expiry_horizon(store.clock(), RULES)
    assert store.expire(horizon, 100) == [b"b:0:0"]
    store.note_batch_records([b"b:0:1"])
    store.commit(2, (0, 2))
    assert store.applied(marker) is not None, "carried forward: its reservation is pending"
    store.put_hold(key, Hold("alice", "", 7, 0, 1, "posted", [["bob", 7]], 1, T0 + 2))
    store.commit(3, (0, 3))
    store.advance_clock(T0 + 4 * WINDOW_MS)
    store.expire(expiry_horizon(store.clock(), RULES), 100)
    store.commit(4, (0, 4))
    assert store.applied(marker) is None, "settled: its id goes"
    store.close()
