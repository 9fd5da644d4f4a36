"""`bank replay recompute`: what the decision logic, as it is now, would have decided.

Re-decides every input of the live generation with kbank.streams.decisions (the
same pure functions the engine runs, with the current settings' Rules), in
the order the live engine processed them: per partition, the batches that
engine.batches' committed records name, credits then requests
within a batch, exactly as the engine does, through the engine's own adapter
(kbank.streams.engine.apply). A credit slot takes the new generation's
message for the same (request, account), whatever its kind; a slot whose
message the new logic no longer sends is skipped, and new messages with no
slot are delivered at the end. With unchanged rules this reproduces the live
ledger exactly, which is the recompute's own self-check.

The new generation's ledger events and outcomes go to topics named
`<prefix>gen-<id>.ledger.events` / `.transfers.outcomes`, and its account
states to a store under BANK_STATE_DIR/gen-<id>; the live generation is not
touched. The report lists, account by account and request by request, what
the new generation decides differently.
"""
from __future__ import annotations

import sys
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson
from confluent_kafka import Message

from kbank.streams.files import private_dir
from kbank.replay.ledger import LedgerFold
from kbank.replay.parallel import in_processes, partition_shares
from kbank.streams.progress import progress_bar
from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.config import Settings
from kbank.streams.generations import generation_settings
from kbank.streams.decisions import (EXPIRE, BadMessage, Decision, Rules, Undecodable, deciding_account,
                               message_scope, parse_message)
from kbank.streams.engine import (MemoryState, credit_decision, forwarded_from, is_misrouted,
                                  record, request_decision)
from kbank.streams.model import (LINK_ACK, REFUND, VERSION_HEADERS, Account, Position, outcome_key,
                                 request_key, status_moves)
from kbank.streams.partitioning import partition_for
from kbank.streams.topics import ensure_topics, partition_count

Input = tuple[str, int]  # ("c" | "r", offset) on a partition


def _slot(message: dict[str, Any]) -> tuple[str, str, int | None]:
    """Which credit slot a message fills: its request (by request key), its account and,
    for a linked transfer's messages, the member (several answers reach the same sender)."""
    return (request_key(message_scope(message), message["request_id"]), message["account"],
            message.get("index"))


def applied_batches(settings: Settings, partitions: list[int] | None = None) -> dict[int, list[Input]]:
    """Per partition (of all, or of `partitions`), the inputs the live engine applied, in
    its processing order.

    engine.batches' records are written in the engine's transactions, so a read_committed
    reader sees exactly the committed batches, in commit order."""
    order: dict[int, list[Input]] = defaultdict(list)
    for msg in read_topic(settings, settings.topic(topics.BATCHES), partitions=partitions):
        c0, c1, r0, r1 = orjson.loads(msg.value())["in"]
        order[msg.partition()] += [("c", o) for o in range(c0, c1)] + [("r", o) for o in range(r0, r1)]
    return order


def _index(settings: Settings, logical_topic: str,
           partitions: list[int] | None = None) -> dict[tuple[int, int], Message]:
    return {(m.partition(), m.offset()): m
            for m in read_topic(settings, settings.topic(logical_topic), partitions=partitions)}


def live_inputs(settings: Settings, partitions: list[int] | None = None
                ) -> tuple[dict[int, list[Input]], dict[tuple[int, int], Message],
                           dict[tuple[int, int], Message]]:
    """(the processing order per partition, the requests, the credits) of all partitions or
    of `partitions`. Inputs after the last committed batch (being processed, or still
    queued) come last, credits before requests as the engine takes them."""
    order = applied_batches(settings, partitions)
    requests = _index(settings, topics.REQUESTS, partitions)
    credits = _index(settings, topics.CREDITS, partitions)
    for p in {p for p, _ in requests} | {p for p, _ in credits}:
        seen = set(order[p])
        order[p] += [("c", off) for (q, off) in sorted(credits) if q == p and ("c", off) not in seen]
        order[p] += [("r", off) for (q, off) in sorted(requests) if q == p and ("r", off) not in seen]
    return order, requests, credits


@dataclass
class Generation:
    """The new generation's decisions, made by the engine's own adapter
    (kbank.streams.engine.apply) over one in-memory state per partition."""

    states: dict[int, MemoryState] = field(default_factory=lambda: defaultdict(MemoryState))
    events: list[tuple[str, bytes]] = field(default_factory=list)       # (account, raw event)
    outcomes: list[tuple[str, bytes]] = field(default_factory=list)     # (request key, raw outcome)
    # credit messages the new logic sent, by _slot: [key, message, ts, claimed, encoded]
    messages: dict[tuple[str, str], deque] = field(default_factory=lambda: defaultdict(deque))
    sent: list[list] = field(default_factory=list)    # the same, in creation order

    @property
    def accounts(self) -> dict[str, Account]:
        """Every account's state (each lives on one partition)."""
        return {name: acct for state in self.states.values() for name, acct in state.accounts.items()}

    def emit(self, decision: Decision, partition: int, ts: int) -> None:
        out = record(self.states[partition], decision, ts)
        if out.event is not None:
            self.events.append((decision.account, out.event))
        self.outcomes += [(key.decode(), raw) for key, raw in out.outcomes]
        for (key, message), (_, encoded) in zip(decision.messages, out.messages):
            item = [key, message, ts, False, encoded]
            self.messages[_slot(message)].append(item)
            self.sent.append(item)


def simulate(settings: Settings, rules: Rules, partitions: int,
             show_progress: bool = True) -> Generation:
    """Re-decide the live generation's inputs with `rules`, in the live processing order
    (`partitions`: the live topics' partition count)."""
    order, requests, credits = live_inputs(settings)
    gen = Generation()
    decided: set[tuple[int, int]] = set()
    request_positions: dict[str, list[tuple[int, int]]] = defaultdict(list)   # by request key
    for (p, off), msg in requests.items():
        try:
            body = orjson.loads(msg.value())
            rid, scope = body.get("request_id"), deciding_account(body)
        except (orjson.JSONDecodeError, TypeError, AttributeError):
            continue
        if isinstance(rid, str) and isinstance(scope, str):
            request_positions[request_key(scope, rid)].append((p, off))
    slots_done: set[tuple[str, str, int | None]] = set()
    progress = progress_bar("recompute: inputs", "inputs", enabled=show_progress)
    cursors = {p: 0 for p in order}

    def slot_ready(message: dict[str, Any]) -> bool:
        rid, account, index = _slot(message)
        if gen.messages[(rid, account, index)]:
            return True
        if message["kind"] in (REFUND, LINK_ACK):  # produced by a credit slot on the receiver
            return (rid, message["counterparty"], index) in slots_done
        if "index" in message:   # a linked member's credit: sent by the sender's last answer
            return False
        # the first decision of a request sends its message; copies of it never do
        return any(pos in decided for pos in request_positions.get(rid, []))

    def run_input(p: int, kind: str, off: int, force: bool) -> bool:
        if kind == "r":
            msg = requests.get((p, off))
            if msg is not None and not is_misrouted(msg.key(), p, partitions):
                decided.add((p, off))
                _decide_request(gen, msg, p, rules)
            return True   # a misrouted request is decided where the engine forwarded it
        old = credits.get((p, off))
        if old is None:
            return True
        try:
            if (original := forwarded_from(old)) is not None:
                decided.add((original.partition, original.offset))
                _decide_request(gen, old, p, rules, original)
                return True
            message = parse_message(old.key(), old.value())
        except BadMessage:
            return True   # dead-lettered live too
        if message["kind"] == EXPIRE:   # the engine's own clock wrote it: an input as it is
            _decide_credit(gen, message, p, old.timestamp()[1], Position(old.topic(), p, off),
                           rules)
            return True
        if not force and not slot_ready(message):
            return False
        slots_done.add(_slot(message))
        queue = gen.messages[_slot(message)]
        if queue:
            item = queue.popleft()
            item[3] = True
            _decide_credit(gen, item[1], p, old.timestamp()[1], Position(old.topic(), p, off),
                           rules)
        return True

    remaining = sum(len(v) for v in order.values())
    while remaining:
        progressed = False
        for p, items in order.items():
            while cursors[p] < len(items):
                kind, off = items[cursors[p]]
                if not run_input(p, kind, off, force=False):
                    break
                cursors[p] += 1
                remaining -= 1
                progress.update()
                progressed = True
        if not progressed:  # no slot is ready anywhere: take the first waiting one as is
            p = next(p for p, items in order.items() if cursors[p] < len(items))
            kind, off = order[p][cursors[p]]
            run_input(p, kind, off, force=True)
            cursors[p] += 1
            remaining -= 1
    # messages of the new logic that no live credit slot took (they may send more)
    i = 0
    while i < len(gen.sent):
        key, message, ts, claimed, _ = gen.sent[i]
        i += 1
        if claimed:
            continue
        gen.sent[i - 1][3] = True
        gen.messages[_slot(message)].popleft()
        _decide_credit(gen, message, partition_for(key, partitions), ts,
                       Position(settings.topic(topics.CREDITS), -1, -1), rules)
    progress.close()
    return gen


def _decide_request(gen: Generation, msg: Message, partition: int, rules: Rules,
                    pos: Position | None = None) -> None:
    """Decide a request on `partition` (`pos`: where a forwarded one was written)."""
    ts = msg.timestamp()[1]
    pos = pos or Position(msg.topic(), partition, msg.offset())
    try:
        decision = request_decision(gen.states[partition], msg.key(), msg.value(), ts, pos, rules)
    except Undecodable:
        return  # dead-lettered live too
    gen.emit(decision, partition, ts)


def _decide_credit(gen: Generation, message: dict[str, Any], partition: int, ts: int,
                   pos: Position, rules: Rules) -> None:
    try:
        decision = credit_decision(gen.states[partition], message, ts, pos, rules)
    except BadMessage:
        return   # a record the engine could not have written: dead-lettered live too
    gen.emit(decision, partition, ts)


@dataclass
class ShareRun:
    """One process's share of a parallel recompute: its partitions re-decided, each credit
    slot filled with the live message (what the other partitions sent live), and what its
    decisions sent and its slots took, to check afterwards that the two agree."""

    gen: Generation
    sent: dict[tuple[str, str, int | None], list[tuple[int, bytes]]]   # slot -> (sender, message)
    used: dict[tuple[str, str, int | None], list[bytes]]               # slot -> live message taken


def simulate_share(settings: Settings, rules: Rules, share: list[int],
                   partitions: int) -> ShareRun:
    """Re-decide the inputs of the partitions in `share`, each partition in the live order;
    a credit slot takes the live message (`partitions`: the live topics' count)."""
    order, requests, credits = live_inputs(settings, share)
    gen = Generation()
    used: dict[tuple[str, str, int | None], list[bytes]] = defaultdict(list)
    sent: dict[tuple[str, str, int | None], list[tuple[int, bytes]]] = defaultdict(list)
    for p in share:
        for kind, off in order.get(p, []):
            sent_before = len(gen.sent)
            if kind == "r":
                if (msg := requests.get((p, off))) is not None \
                        and not is_misrouted(msg.key(), p, partitions):
                    _decide_request(gen, msg, p, rules)
            elif (old := credits.get((p, off))) is not None:
                try:
                    if (original := forwarded_from(old)) is not None:
                        _decide_request(gen, old, p, rules, original)
                        continue
                    message = parse_message(old.key(), old.value())
                except BadMessage:
                    continue   # dead-lettered live too
                if message["kind"] != EXPIRE:   # the engine's clock writes expires, no decision
                    used[_slot(message)].append(old.value())
                _decide_credit(gen, message, p, old.timestamp()[1],
                               Position(old.topic(), p, off), rules)
            for _, message, _, _, encoded in gen.sent[sent_before:]:
                sent[_slot(message)].append((p, encoded))
    gen.messages.clear()
    gen.sent.clear()
    for state in gen.states.values():   # what the report and the new generation do not need:
        state.markers, state.holds = {}, {}   # not sent back to the parent process
    return ShareRun(gen, dict(sent), dict(used))


def shares_agree(runs: list[ShareRun]) -> bool:
    """Whether every slot took exactly the messages the new logic sent it, in the order one
    partition sent them: then each partition saw the inputs the one-process simulation
    gives it, and the shares' decisions are that simulation's."""
    sent: dict[tuple[str, str, int | None], list[tuple[int, bytes]]] = defaultdict(list)
    used: dict[tuple[str, str, int | None], list[bytes]] = {}
    for run in runs:
        for slot, items in run.sent.items():
            sent[slot] += items
        used.update(run.used)   # a slot's account lives on one partition: one share takes it
    for slot in sent.keys() | used.keys():
        items = sent.get(slot, [])
        if len({partition for partition, _ in items}) > 1 \
                or [encoded for _, encoded in items] != used.get(slot, []):
            return False
    return True


def simulate_in_parallel(settings: Settings, rules: Rules, partitions: int,
                         processes: int) -> Generation:
    """`simulate` across processes, one share of the partitions each, every credit slot
    filled with the live message. Where the new rules send other messages between
    partitions than the live ones, a partition's inputs depend on the others' new
    decisions: then the shares' work is dropped and `simulate` runs in one process."""
    shares = partition_shares(settings, settings.topic(topics.REQUESTS), processes)
    runs = in_processes(simulate_share, [(settings, rules, share, partitions)
                                         for share in shares])
    if not shares_agree(runs):
        print("recompute: the new rules change messages between partitions; "
              "recomputing in one process", flush=True)
        return simulate(settings, rules, partitions)
    gen = Generation()
    for run in runs:
        gen.states.update(run.gen.states)
        gen.events += run.gen.events
        gen.outcomes += run.gen.outcomes
    return gen


def events_by_account(events: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """Each account's raw events in the order decided: how two generations (or the shares of
    a parallel recompute) are compared byte for byte."""
    out: dict[str, list[bytes]] = {}
    for account, raw in events:
        out.setdefault(account, []).append(raw)
    return out


def final_outcomes(raw_outcomes: list[bytes]) -> dict[str, tuple[str, str | None]]:
    """request key -> (status, reason): the furthest along (model.status_moves)."""
    result: dict[str, tuple[str, str | None]] = {}
    for raw in raw_outcomes:
        try:
            out = orjson.loads(raw)
            key = outcome_key(out)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue
        old = result.get(key)
        if status_moves(old[0] if old else None, out):
            result[key] = (out["status"], out.get("reason"))
    return result


@dataclass
class RecomputeDiff:
    accounts: dict[str, tuple[int | None, int | None]]    # name -> (live balance, new balance)
    requests: dict[str, tuple[Any, Any]]                  # id -> (live (status, reason), new)
    events_live: int = 0
    events_new: int = 0

    def render(self, limit: int = 200) -> str:
        lines = [f"ledger events: live {self.events_live}, new generation {self.events_new}",
                 f"accounts that differ: {len(self.accounts)}"]
        for name, (live, new) in sorted(self.accounts.items())[:limit]:
            lines.append(f"  account {name}: balance {live} -> {new}")
        lines.append(f"requests decided differently: {len(self.requests)}")
        for rid, (live, new) in sorted(self.requests.items())[:limit]:
            lines.append(f"  request {rid}: {_status(live)} -> {_status(new)}")
        return "\n".join(lines)


def _status(value: tuple[str, str | None] | None) -> str:
    if value is None:
        return "none"
    return value[0] + (f" ({value[1]})" if value[1] else "")


def diff(settings: Settings, gen: Generation) -> RecomputeDiff:
    live = LedgerFold()
    for msg in read_topic(settings, settings.topic(topics.LEDGER)):
        live.apply(msg.value())
    accounts = {}
    for name in set(live.accounts) | set(gen.accounts):
        a = live.accounts[name].balance if name in live.accounts else None
        b = gen.accounts[name].balance if name in gen.accounts else None
        if a != b:
            accounts[name] = (a, b)
    live_out = final_outcomes([m.value() for m in read_topic(settings, settings.topic(topics.OUTCOMES))])
    new_out = final_outcomes([raw for _, raw in gen.outcomes])
    requests = {rid: (live_out.get(rid), new_out.get(rid))
                for rid in set(live_out) | set(new_out) if live_out.get(rid) != new_out.get(rid)}
    return RecomputeDiff(accounts, requests, live.applied, len(gen.events))


def write_generation(settings: Settings, generation: str, gen: Generation) -> Settings:
    """The new generation's ledger and outcomes topics, and its account store."""
    import os

    from rocksdict import Rdict, WriteBatch

    target = generation_settings(settings, generation)
    ensure_topics(target)
    producer = kafka.producer(target, kafka.TOOLS, **{"linger.ms": 20, "queue.buffering.max.messages": 2_000_000})
    for topic, rows in ((topics.LEDGER, gen.events), (topics.OUTCOMES, gen.outcomes)):
        for key, raw in rows:
            kafka.produce_waiting(producer, target.topic(topic), 0.05, key=key.encode(), value=raw,
                                  headers=VERSION_HEADERS)
    if producer.flush(120) > 0:
        raise TimeoutError("the new generation's records were not acknowledged")
    path = os.path.join(settings.state_dir, f"gen-{generation}", "accounts")
    private_dir(path)
    store = Rdict(path)
    batch = WriteBatch()
    for name, acct in gen.accounts.items():
        batch.put(name.encode(), orjson.dumps(acct.to_json()))
    store.write(batch)
    store.close()
    return target


def main(settings: Settings, generation: str, processes: int = 1) -> int:
    partitions = partition_count(settings, topics.REQUESTS, kafka.TOOLS)
    rules = Rules.from_settings(settings, partitions)
    print(f"recompute: rules {rules}; new generation {generation!r}", flush=True)
    gen = simulate_in_parallel(settings, rules, partitions, processes) if processes > 1 \
        else simulate(settings, rules, partitions)
    target = write_generation(settings, generation, gen)
    report = diff(settings, gen)
    print(report.render())
    print(f"new generation written: topics {target.topic(topics.LEDGER)}, "
          f"{target.topic(topics.OUTCOMES)}; store {settings.state_dir}/gen-{generation}")
    print(f"after review: bank replay switch --generation {generation}")
    sys.stdout.flush()
    return 0
