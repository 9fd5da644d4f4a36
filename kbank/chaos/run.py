"""`bank chaos --seconds S`: a steady load while faults are injected, then a verdict.

Faults, round-robin, `--every` seconds apart:
  kill-engine   SIGKILL an engine worker, restart it
  kill-views    SIGKILL a views worker, restart it
  add-engine    start one more engine worker (rebalance)
  remove-engine stop an extra engine worker gracefully (rebalance)
  zombie        SIGSTOP an engine worker past the session timeout (its partitions move),
                then SIGCONT it: whatever it still writes must not break anything
  pause-broker  SIGSTOP the embedded broker for 2 s, then SIGCONT (embedded broker only)

At the end the load stops, every request is waited for, and `bank replay
verify` runs over the logs; the views are compared with `replay views`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace

import orjson
from confluent_kafka import Producer

from kbank.chaos.holds import HoldMix
from kbank.streams import kafka, topics
from kbank.streams.kafka import produce_waiting
from kbank.streams.model import request_key
from kbank.streams.broker import KafkaCluster, free_port
from kbank.streams.client import OutcomeWatcher, RequestSender
from kbank.streams.config import Settings, describe
from kbank.streams.apikeys import OPERATOR
from kbank.streams.principals import secure_deployment
from kbank.streams.keystore import create_key
from kbank.streams.supervisor import WorkerPool, wait_for_views
from kbank.streams.topics import ensure_topics

VIEWS_CATCH_UP_S = 90  # how long the views get to agree with the rebuilt ones after the load

FAULTS = ["kill-engine", "kill-views", "add-engine", "zombie", "remove-engine", "pause-broker"]
CLUSTER_FAULTS = ["kill-broker", "kill-controller"]   # --brokers 3 only


@dataclass
class ChaosReport:
    faults: list[str] = field(default_factory=list)
    sent: int = 0
    duplicates_sent: int = 0
    misrouted_sent: int = 0     # through librdkafka's default partitioner
    hostile_sent: int = 0
    applied: int = 0
    completed: int = 0
    rejected: int = 0
    lost: int = 0
    applied_twice: int = 0
    money_conserved: bool = False
    holds: dict[str, int] = field(default_factory=dict)   # verify's hold counts
    hold_violations: int = 0
    views_differences: int = -1
    verify_text: str = ""

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.applied_twice == 0 and self.money_conserved
                and self.hold_violations == 0 and self.views_differences == 0)

    def render(self) -> str:
        return "\n".join([
            f"faults injected      {len(self.faults)}: {', '.join(self.faults)}",
            f"requests sent        {self.sent} (+{self.duplicates_sent} duplicate deliveries; "
            f"{self.misrouted_sent} by librdkafka's default partitioner, {self.hostile_sent} "
            f"hostile records)",
            f"applied              {self.applied} ({self.completed} completed, {self.rejected} rejected)",
            f"lost                 {self.lost}",
            f"applied twice        {self.applied_twice}",
            f"money conserved      {'yes' if self.money_conserved else 'NO'}",
            f"holds                {self.holds.get('made', 0)} made: {self.holds.get('posted', 0)} "
            f"posted, {self.holds.get('hold_released', 0)} voided, {self.holds.get('expired', 0)} "
            f"expired, {self.holds.get('pending', 0)} pending; {self.hold_violations} violation(s)",
            f"views vs ledger      {self.views_differences} difference(s)",
            "chaos: OK" if self.ok else "chaos: FAILED",
        ])


def hostile_requests(i: int, src: str, dst: str) -> list[tuple[dict | bytes, bool]]:
    """Records a careless or hostile client sends, keyed by `src`: (record, whether it has
    an outcome to wait for). None may stop the engine (issues 40 and 41)."""
    return [
        (b"not json at all", False),                                        # dead-lettered
        ({"type": ["transfer"], "request_id": f"hz-{i}", "from": src, "to": dst, "amount": 1},
         False),                                                            # rejected: invalid
        ({"type": "linked", "request_id": f"hl-{i}", "from": src,
          "transfers": [{"to": dst, "amount": 1, "from": None}]}, True),     # rejected: invalid
        ({"type": "transfer", "request_id": f"hn-{i}", "from": src, "to": dst, "amount": -5},
         True),                                                             # rejected: invalid
    ]


class Load(threading.Thread):
    """Transfers at a steady rate among opened accounts, every 30th sent twice; every 10th
    step also makes a hold and may post, void or race an earlier one (kbank.chaos.holds).
    Every 4th transfer goes through librdkafka's default partitioner (consistent_random: most
    land on a partition their key does not map to, and are forwarded), and every 50th step
    sends the hostile records of `hostile_requests`."""

    def __init__(self, settings: Settings, names: list[str], rate: float, seed: int = 3) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.sender = RequestSender(settings)
        self.plain = Producer(kafka.client_config(settings, kafka.OPERATOR))   # its defaults
        self.misrouted = self.hostile = 0
        self.names, self.rate, self.rng = names, rate, random.Random(seed)
        self.holds = HoldMix(names, "ch", 3_000, random.Random(seed + 1))
        self.ids: list[str] = []
        self.duplicates = 0
        self.stop = threading.Event()

    def run(self) -> None:
        start, i = time.monotonic(), 0
        while not self.stop.is_set():
            src, dst = self.rng.sample(self.names, 2)
            req = {"type": "transfer", "request_id": f"c-{i}", "from": src, "to": dst,
                   "amount": self.rng.randint(1, 3_000)}
            if i % 4 == 2:
                self._send_plain(src, orjson.dumps(req))
                key = request_key(src, req["request_id"])
                self.misrouted += 1
            else:
                key = self.sender.send(req)
            if i % 50 == 25:
                for record, answered in hostile_requests(i, src, dst):
                    raw = record if isinstance(record, bytes) else orjson.dumps(record)
                    self._send_plain(src, raw)
                    self.hostile += 1
                    if answered:
                        self.ids.append(request_key(src, record["request_id"]))
            if i % 30 == 0:
                self.sender.send(req)
                self.duplicates += 1
            self.ids.append(key)
            if i % 10 == 0:
                for hold_req in self.holds.step():
                    self.ids.append(self.sender.send(hold_req))
            i += 1
            ahead = start + i / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self.sender.flush()
        self.plain.flush(60)

    def _send_plain(self, account: str, value: bytes) -> None:
        """A record through the plain producer, keyed by `account`."""
        produce_waiting(self.plain, self.settings.topic(topics.REQUESTS), key=account.encode(),
                        value=value)
        self.plain.poll(0)


def run_chaos(settings: Settings, seconds: float, every: float, rate: float, accounts: int,
              broker: KafkaCluster | None, log_dir: str, log=print) -> ChaosReport:  # noqa: ANN001
    rng = random.Random(11)
    report = ChaosReport()
    engine = WorkerPool(settings, 2, log_dir)
    views = WorkerPool(settings, 2, log_dir, command="views", web_ports=[free_port(), free_port()])
    urls = [views.url(w) for w in views.procs]
    api_key = create_key(settings, OPERATOR, label="bank chaos: compares the views").token
    try:
        if not wait_for_views(urls, settings.partitions):
            raise RuntimeError("views workers did not start")
        watcher, ids, names = open_accounts(settings, accounts)
        load = Load(settings, names, rate)
        load.start()
        end = time.monotonic() + seconds
        next_fault, n = time.monotonic() + every / 2, 0
        extra: list[str] = []
        while time.monotonic() < end:
            for pool in (engine, views):
                pool.restart_dead()
            if time.monotonic() >= next_fault:
                schedule = FAULTS + (CLUSTER_FAULTS if broker and len(broker.nodes) >= 3 else [])
                fault = schedule[n % len(schedule)]
                n += 1
                if fault in ("pause-broker", *CLUSTER_FAULTS) and broker is None:
                    continue
                _inject(fault, engine, views, broker, extra, settings, rng)
                report.faults.append(fault)
                log(f"chaos: t+{seconds - (end - time.monotonic()):.0f}s {fault}")
                # counted from the end of the fault: a long one (zombie) is not followed by a burst
                next_fault = time.monotonic() + every
            time.sleep(0.2)
        finish_load(load, ids, watcher, engine, report, log)
        check(settings, report, urls, views, log, api_key)
    finally:
        for pool in (engine, views):
            for wid in list(pool.procs):
                pool.kill(wid)
    return report


def finish_load(load: Load, ids: list[str], watcher: OutcomeWatcher, engine: WorkerPool,
                report: ChaosReport, log) -> None:  # noqa: ANN001
    """Stop the load and wait (up to 5 minutes, restarting engine workers that exited) for
    the outcome of every request; the counts go in the report."""
    load.stop.set()
    load.join()
    all_ids = ids + load.ids
    log(f"chaos: load stopped after {len(load.ids)} transfers; waiting for every outcome")
    deadline = time.monotonic() + 300
    while watcher.finished(all_ids) < len(all_ids) and time.monotonic() < deadline:
        engine.restart_dead()
        time.sleep(0.5)
    watcher.close()
    report.sent, report.duplicates_sent = len(all_ids), load.duplicates
    report.misrouted_sent, report.hostile_sent = load.misrouted, load.hostile


def open_accounts(settings: Settings, accounts: int) -> tuple[OutcomeWatcher, list[str], list[str]]:
    """Open and fund the load's accounts; (the watcher of outcomes, the setup's request keys,
    the accounts' names)."""
    names = [f"acct-{i}" for i in range(accounts)]
    watcher = OutcomeWatcher(settings, from_beginning=True)
    setup = RequestSender(settings)
    ids = []
    for name in names:
        for req in ({"type": "open_account", "request_id": f"open-{name}", "account": name},
                    {"type": "deposit", "request_id": f"dep-{name}", "account": name,
                     "amount": 100_000}):
            ids.append(setup.send(req))
    setup.flush()
    if not watcher.wait(ids, 120):
        raise RuntimeError("accounts were not opened")
    return watcher, ids, names


def _inject(fault: str, engine: WorkerPool, views: WorkerPool, broker: KafkaCluster | None,
            extra: list[str], settings: Settings, rng: random.Random) -> None:
    if fault == "kill-engine":
        victim = rng.choice(sorted(engine.procs))
        engine.kill(victim)
        engine.start(victim)
    elif fault == "kill-views":
        victim = rng.choice(sorted(views.procs))
        views.kill(victim)
        views.start(victim)
    elif fault == "add-engine":
        wid = str(100 + len(extra))
        extra.append(wid)
        engine.start(wid)
    elif fault == "remove-engine":
        if extra:
            engine.stop(extra.pop())
    elif fault == "zombie":
        victim = engine.procs[rng.choice(sorted(engine.procs))]
        victim.send_signal(signal.SIGSTOP)
        time.sleep(settings.session_timeout_ms / 1000 * 2)  # long enough for its partitions to move
        victim.send_signal(signal.SIGCONT)
    elif fault == "pause-broker" and broker is not None:
        pid = broker.pid(rng.randint(1, len(broker.nodes)))
        if pid:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(2)
            os.kill(pid, signal.SIGCONT)
    elif fault in CLUSTER_FAULTS and broker is not None:
        node = broker.active_controller() if fault == "kill-controller" else \
            rng.randint(1, len(broker.nodes))
        broker.kill_node(node)          # SIGKILL
        time.sleep(3)
        broker.start_node(node)         # and back, waiting until the cluster is whole


def check(settings: Settings, report: ChaosReport, urls: list[str], views: WorkerPool, log,  # noqa: ANN001
           api_key: str) -> None:
    from kbank.replay.verify import verify
    from kbank.replay.views import compare, rebuild

    result = verify(settings, require_final=True)
    report.verify_text = result.render()
    report.applied = result.requests_final
    report.completed, report.rejected = result.completed, result.rejected
    report.lost = result.lost + (result.requests - result.requests_final)
    report.applied_twice = result.applied_twice
    report.money_conserved = result.money_conserved and not result.violations
    report.holds = dict(result.holds)
    report.hold_violations = result.holds["pending"] + result.holds["violations"]
    log("chaos: verify\n  " + report.verify_text.replace("\n", "\n  "))
    if not wait_for_views(urls, settings.partitions):
        log("chaos: views not ready for the comparison")
        return
    rebuilt = rebuild(settings, tempfile.mkdtemp(prefix="bank-chaos-views-"), show_progress=False)
    # a views worker restarted late in the run may still be folding the last outcomes (a worker
    # that took partitions it had no store for folds them from the ledger's start): differences
    # must vanish within the deadline to pass
    deadline = time.monotonic() + VIEWS_CATCH_UP_S
    while True:
        diffs = asyncio.run(compare(rebuilt, urls[0], settings.partitions, api_key,
                                    show_progress=False))
        if not diffs or time.monotonic() > deadline:
            break
        log(f"chaos: {len(diffs)} view difference(s); asking again (views may still be catching up)")
        time.sleep(5)
    for line in diffs[:20]:
        log(f"  - {line}")
    report.views_differences = len(diffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bank chaos", description=__doc__, epilog=describe(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120, help="how long the load and faults run")
    parser.add_argument("--every", type=float, default=8, help="seconds between faults")
    parser.add_argument("--rate", type=float, default=300, help="transfers per second")
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--brokers", type=int, default=1, choices=(1, 3),
                        help="embedded Kafka nodes; 3 adds broker and controller kills to the faults")
    parser.add_argument("--hosts", action="store_true",
                        help="every broker, engine and views worker on a host of its own, and "
                             "the network cut between them (kbank.chaos.network; needs root)")
    parser.add_argument("--engines", type=int, default=2, choices=range(1, 7),
                        help="--hosts: engine workers, each on its host")
    parser.add_argument("--scale", type=float, default=0, metavar="STEP_S",
                        help="--hosts: no faults; engine workers added one by one up to "
                             "--engines during the load, then removed, STEP_S seconds each")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    settings = replace(settings, state_dir=tempfile.mkdtemp(prefix="bank-chaos-state-"),
                       topic_prefix=settings.topic_prefix or f"chaos-{os.getpid()}-")
    log_dir = tempfile.mkdtemp(prefix="bank-chaos-logs-")
    if args.hosts:
        return _main_hosts(args, settings, log_dir)
    broker = None
    if not settings.bootstrap_servers:
        # secured as `bank up` runs it: every process connects as its role's principal
        broker = KafkaCluster(os.path.join(log_dir, "kafka"), nodes=args.brokers,
                              secured=True).start()
        settings = replace(settings, bootstrap_servers=broker.bootstrap_servers,
                           replication_factor=3 if args.brokers >= 3 else 1)
        settings = secure_deployment(settings, broker.admin_config(),
                                     os.path.join(log_dir, "credentials"))
    try:
        ensure_topics(settings)
        print(f"chaos: {args.seconds:.0f} s, a fault every {args.every:.0f} s, {args.rate:.0f} "
              f"transfers/s; logs in {log_dir}", flush=True)
        report = run_chaos(settings, args.seconds, args.every, args.rate, args.accounts, broker,
                           log_dir, log=lambda s: print(s, flush=True))
    finally:
        if broker is not None:
            broker.stop()
    print(report.render(), flush=True)
    return 0 if report.ok else 1


def _main_hosts(args: argparse.Namespace, settings: Settings, log_dir: str) -> int:
    from kbank.chaos.hosts import why_unavailable
    from kbank.chaos.network import render_windows, run_hosts_chaos

    reason = why_unavailable()
    if reason or settings.bootstrap_servers:
        print(f"error: bank chaos --hosts makes its own brokers on hosts of its own: "
              f"{reason or 'unset KAFKA_BOOTSTRAP_SERVERS'}", file=sys.stderr)
        return 2
    if args.scale:
        from kbank.chaos.network import render_scale, run_hosts_scale

        steps, picture = run_hosts_scale(settings, args.scale, args.rate, args.accounts,
                                         args.engines, log_dir, log=lambda s: print(s, flush=True))
        print(render_scale(steps), f"plot: {picture}", sep="\n", flush=True)
        return 0
    print(f"chaos --hosts: {args.seconds:.0f} s, a fault every {args.every:.0f} s, "
          f"{args.rate:.0f} transfers/s; logs in {log_dir}", flush=True)
    report, windows, picture = run_hosts_chaos(settings, args.seconds, args.every, args.rate,
                                               args.accounts, args.engines, log_dir,
                                               log=lambda s: print(s, flush=True))
    print(report.render(), render_windows(windows), f"plot: {picture}", sep="\n", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
