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
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import replace

from kbank.chaos.workload import ChaosReport, Load, check, finish_load, open_accounts
from kbank.streams.broker import KafkaCluster, free_port
from kbank.streams.config import Settings, describe
from kbank.streams.apikeys import OPERATOR
from kbank.streams.principals import secure_deployment
from kbank.streams.keystore import create_key
from kbank.streams.supervisor import WorkerPool, wait_for_views
from kbank.streams.topics import ensure_topics

FAULTS = ["kill-engine", "kill-views", "add-engine", "zombie", "remove-engine", "pause-broker"]
CLUSTER_FAULTS = ["kill-broker", "kill-controller"]   # --brokers 3 only


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
