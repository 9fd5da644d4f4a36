"""`bank chaos --hosts`: the bank across hosts, with the network cut between its parts.

Three brokers, the engine workers and two views workers each run on a host of their own
(network namespaces, kbank.chaos.hosts) with `bank chaos`'s load from this machine. Faults,
round-robin, `--every` seconds apart, each for FAULT_S seconds (longer than the session and
transaction timeouts):

  isolate-leader      the leader of ledger partition 0 cut from the other brokers (its
                      clients still reach it)
  isolate-follower    a broker that does not lead ledger partition 0 cut from everyone
  isolate-controller  the active KRaft controller's host cut from everyone
  cut-engine          an engine worker cut from every broker
  cut-views           a views worker cut from every broker (clients still reach it)
  slow-engine         200 ms added to what the brokers send engine worker 0 (Toxiproxy) and
                      10% of what it sends them dropped (nftables)
  lost-acks           every broker's packets to the clients dropped (their requests arrive,
                      their acknowledgements do not)

At the end the load stops, every request is waited for, verify runs and the views are
compared with their rebuild (kbank.chaos.workload). The report adds each fault's times and how
long it stopped progress: the longest time any outcomes partition went without an outcome
(stamped by the engine) from the fault's start to FAULT_S after its end; and a plot.
"""
from __future__ import annotations

import bisect
import os
import random
import threading
import time
from dataclasses import dataclass, field, replace

from kbank.chaos.hosts import CLIENT, Hosts
from kbank.chaos.toxics import Toxiproxy, proxy_address
from kbank.chaos.workload import ChaosReport, Load, check, finish_load, open_accounts
from kbank.streams import topics
from kbank.streams.broker import PROXIED_PORT, KafkaCluster, free_port
from kbank.streams.client import OutcomeTail
from kbank.streams.config import Settings
from kbank.streams.kafka import OPERATOR
from kbank.streams.principals import secure_deployment
from kbank.streams.supervisor import WorkerPool
from kbank.streams.topics import ensure_topics

FAULT_S = 20.0
BROKERS = ["broker-1", "broker-2", "broker-3"]
VIEWS = ["views-0", "views-1"]
NETWORK_FAULTS = ["isolate-leader", "cut-engine", "lost-acks", "isolate-follower", "cut-views",
                  "slow-engine", "isolate-controller"]


@dataclass
class FaultWindow:
    name: str
    target: str
    start: float          # wall-clock seconds
    end: float = 0.0
    stopped_s: float = 0.0   # the longest outcome gap of one partition around it


@dataclass
class Progress:
    """Every outcome's engine timestamp, per outcomes partition (what the engine decided
    when, whatever the observer's own link was doing)."""

    stamps: dict[int, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fold(self, msgs: list) -> None:  # noqa: ANN001 - confluent-kafka Messages
        with self.lock:
            for msg in msgs:
                if msg.error() is None:
                    self.stamps.setdefault(msg.partition(), []).append(msg.timestamp()[1] / 1000)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time within [start, end] one partition went without an outcome."""
        longest = 0.0
        with self.lock:
            series = {p: sorted(s) for p, s in self.stamps.items()}
        for stamps in series.values():
            inside = stamps[bisect.bisect_left(stamps, start):bisect.bisect_right(stamps, end)]
            edges = [start, *inside, end]
            longest = max(longest, max(b - a for a, b in zip(edges, edges[1:])))
        return longest

    def per_second(self) -> tuple[list[float], list[int]]:
        with self.lock:
            every = sorted(t for s in self.stamps.values() for t in s)
        if not every:
            return [], []
        first = int(every[0])
        counts = [0] * (int(every[-1]) - first + 1)
        for t in every:
            counts[int(t) - first] += 1
        return [first + i for i in range(len(counts))], counts


class Network:
    """The hosts, the cluster on them, Toxiproxy on engine worker 0's host and the
    deployment's settings."""

    def __init__(self, engines: int, log_dir: str) -> None:
        self.engines = [f"engine-{i}" for i in range(engines)]
        self.hosts = Hosts([*BROKERS, *self.engines, *VIEWS], prefix="kbc")
        self.log_dir = log_dir
        self.cluster: KafkaCluster | None = None
        self.toxiproxy: Toxiproxy | None = None

    def start(self, base: Settings) -> Settings:
        self.hosts.create()
        self.cluster = KafkaCluster(os.path.join(self.log_dir, "kafka"), nodes=3, secured=True,
                                    hosts=[self.hosts.host(b) for b in BROKERS],
                                    via=[proxy_address(n) for n in range(1, 4)]).start()
        self.toxiproxy = Toxiproxy(self.hosts, self.engines[0],
                                   os.path.join(self.log_dir, "toxiproxy.log")).start(
            [self.hosts.address(b) for b in BROKERS], PROXIED_PORT)
        settings = replace(base, bootstrap_servers=self.cluster.bootstrap_servers,
                           replication_factor=3)
        settings = secure_deployment(settings, self.cluster.admin_config(),
                                     os.path.join(self.log_dir, "credentials"))
        ensure_topics(settings)
        return settings

    def pools(self, settings: Settings) -> tuple[WorkerPool, WorkerPool]:
        """Engine workers (worker 0 through Toxiproxy) and views workers, each on its host."""
        engine = WorkerPool(settings, 0, self.log_dir,
                            hosts={str(i): self.hosts.host(h) for i, h in enumerate(self.engines)})
        for wid in engine.hosts:
            through = {"KAFKA_BOOTSTRAP_SERVERS": self.toxiproxy.bootstrap_servers(3)} \
                if wid == "0" else {}
            engine.start(wid, through)
        views = WorkerPool(settings, 0, self.log_dir, command="views",
                           web_ports=[free_port() for _ in VIEWS],
                           hosts={str(i): self.hosts.host(h) for i, h in enumerate(VIEWS)})
        for wid in views.hosts:
            views.start(wid)
        return engine, views

    def stop(self) -> None:
        if self.toxiproxy is not None:
            self.toxiproxy.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.hosts.remove()

    # -- faults ---------------------------------------------------------------------------
    def begin(self, fault: str, settings: Settings, rng: random.Random) -> str:
        """Inject `fault`; returns the host it targets."""
        hosts = self.hosts
        if fault in ("isolate-leader", "isolate-follower"):
            leader = BROKERS[self._leader(settings) - 1]
            if fault == "isolate-follower":   # from everyone
                target = rng.choice([b for b in BROKERS if b != leader])
                hosts.isolate(target)
                return target
            for other in BROKERS:            # from the brokers only: clients still reach it
                if other != leader:
                    hosts.cut(leader, other)
            return leader
        if fault == "isolate-controller":
            target = BROKERS[self.cluster.active_controller() - 1]
            hosts.isolate(target)
            return target
        if fault in ("cut-engine", "cut-views"):
            target = self.engines[-1] if fault == "cut-engine" else VIEWS[-1]
            for broker in BROKERS:
                hosts.cut(target, broker)
            return target
        if fault == "slow-engine":
            self.toxiproxy.delay(200)
            for broker in BROKERS:
                hosts.cut_one_way(self.engines[0], broker, percent=10)
            return self.engines[0]
        if fault == "lost-acks":
            for broker in BROKERS:
                hosts.cut_one_way(broker, CLIENT)
            return CLIENT
        raise ValueError(f"unknown fault {fault!r}")

    def end(self) -> None:
        self.hosts.heal()
        self.toxiproxy.clear()

    def _leader(self, settings: Settings) -> int:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap_servers,
                             **self.cluster.admin_config()})
        ledger = settings.topic(topics.LEDGER)
        return admin.list_topics(ledger, timeout=30).topics[ledger].partitions[0].leader


def watch_progress(settings: Settings) -> tuple[Progress, OutcomeTail]:
    progress = Progress()
    return progress, OutcomeTail(settings, OPERATOR, "chaos-progress", progress.fold)


def plot(progress: Progress, windows: list[FaultWindow], path: str) -> str:
    """Outcomes per second over the run, each fault's window shaded and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds, counts = progress.per_second()
    origin = seconds[0] if seconds else 0
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot([s - origin for s in seconds], counts, color="#3b75af", linewidth=1)
    colors = plt.get_cmap("tab10")
    for i, w in enumerate(windows):
        ax.axvspan(w.start - origin, w.end - origin, color=colors(i % 10), alpha=0.2)
        ax.text(w.start - origin, max(counts or [1]) * (0.95 - 0.07 * (i % 4)),
                f"{w.name}\nstopped {w.stopped_s:.1f} s", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("outcomes per second")
    ax.set_title("bank chaos --hosts: outcomes per second, faults shaded")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_hosts_chaos(base: Settings, seconds: float, every: float, rate: float, accounts: int,
                    engines: int, log_dir: str, log=print) -> tuple:  # noqa: ANN001
    """The run: returns (kbank.chaos.workload's ChaosReport, the fault windows, the plot's path)."""

    network, report, windows = Network(engines, log_dir), ChaosReport(), []
    rng = random.Random(17)
    pools: tuple[WorkerPool, ...] = ()
    try:
        settings = network.start(base)
        api_key = views_key(settings)
        engine, views = pools = network.pools(settings)
        urls = [views.url(w) for w in views.procs]
        log(f"chaos: hosts up: brokers {', '.join(network.hosts.address(b) for b in BROKERS)}; "
            f"{engines} engine worker(s), {len(VIEWS)} views workers; logs in {log_dir}")
        progress, tail = watch_progress(settings)
        watcher, ids, names = open_accounts(settings, accounts)
        load = Load(settings, names, rate)
        load.start()
        started = time.monotonic()
        time.sleep(min(every / 2, seconds))
        n = 0
        while time.monotonic() - started + FAULT_S < seconds:
            fault = NETWORK_FAULTS[n % len(NETWORK_FAULTS)]
            n += 1
            window = FaultWindow(fault, network.begin(fault, settings, rng), time.time())
            log(f"chaos: t+{time.monotonic() - started:.0f}s {fault} ({window.target})")
            _wait_out(FAULT_S, pools)
            network.end()
            window.end = time.time()
            windows.append(window)
            report.faults.append(fault)
            _wait_out(max(0.0, every - FAULT_S), pools)
        finish_load(load, ids, watcher, engine, report, log)
        tail.close()
        check(settings, report, urls, views, log, api_key)
        for w in windows:
            w.stopped_s = progress.longest_gap(w.start, w.end + FAULT_S)
        picture = plot(progress, windows, os.path.join(log_dir, "chaos-hosts.png"))
        return report, windows, picture
    finally:
        for pool in pools:
            for wid in list(pool.procs):
                pool.kill(wid)
        network.stop()


def _wait_out(seconds: float, pools: tuple[WorkerPool, ...]) -> None:
    """Sleep, restarting a worker that exited (a worker may halt on a cut: it is restarted,
    as `bank up` would)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for pool in pools:
            pool.restart_dead()
        time.sleep(0.2)


def views_key(settings: Settings) -> str:
    from kbank.streams.apikeys import OPERATOR as OPERATOR_KEY
    from kbank.streams.keystore import create_key

    return create_key(settings, OPERATOR_KEY, label="bank chaos --hosts: compares the views").token


def render_windows(windows: list[FaultWindow]) -> str:
    origin = windows[0].start if windows else 0.0
    lines = ["fault                at (s)  for (s)  stopped progress (s)  target"]
    lines += [f"{w.name:<20} {w.start - origin:>6.0f}  {w.end - w.start:>7.1f}  "
              f"{w.stopped_s:>20.1f}  {w.target}" for w in windows]
    return "\n".join(lines)


@dataclass
class ScaleStep:
    workers: int
    start: float
    end: float = 0.0
    outcomes_per_s: float = 0.0
    stopped_s: float = 0.0     # the longest outcome gap of one partition after the change


def run_hosts_scale(base: Settings, step_s: float, rate: float, accounts: int, most: int,
                    log_dir: str, log=print) -> tuple[list[ScaleStep], str]:  # noqa: ANN001
    """Engine workers added one by one from 1 to `most` during load, then removed one by
    one; each step's throughput and how long its rebalance stopped progress."""

    network, steps = Network(most, log_dir), []
    engine: WorkerPool | None = None
    try:
        settings = network.start(base)
        engine = WorkerPool(settings, 0, log_dir,
                            hosts={str(i): network.hosts.host(h) for i, h in enumerate(network.engines)})
        engine.start("0")
        progress, tail = watch_progress(settings)
        watcher, _, names = open_accounts(settings, accounts)
        watcher.close()
        load = Load(settings, names, rate)
        load.start()
        counts = [*range(1, most + 1), *range(most - 1, 0, -1)]
        for i, workers in enumerate(counts):
            if i:
                if workers > counts[i - 1]:
                    engine.start(str(workers - 1))
                else:
                    engine.stop(str(workers))
            step = ScaleStep(workers, time.time())
            log(f"scale: {workers} engine worker(s)")
            _wait_out(step_s, (engine,))
            step.end = time.time()
            steps.append(step)
        load.stop.set()
        load.join()
        time.sleep(2)   # the last outcomes' stamps
        tail.close()
        seconds, per_s = progress.per_second()
        for step in steps:
            inside = [n for s, n in zip(seconds, per_s) if step.start + step_s / 2 <= s < step.end]
            step.outcomes_per_s = sum(inside) / max(1, len(inside))
            step.stopped_s = progress.longest_gap(step.start, min(step.end, step.start + step_s / 2))
        return steps, plot_scale(steps, os.path.join(log_dir, "scale-hosts.png"))
    finally:
        if engine is not None:
            for wid in list(engine.procs):
                engine.kill(wid)
        network.stop()


def render_scale(steps: list[ScaleStep]) -> str:
    lines = ["engine workers  outcomes/s (second half)  stopped by the change (s)"]
    lines += [f"{s.workers:>14}  {s.outcomes_per_s:>24,.0f}  {s.stopped_s:>25.1f}" for s in steps]
    return "\n".join(lines)


def plot_scale(steps: list[ScaleStep], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    x = range(len(steps))
    ax.bar(x, [s.outcomes_per_s for s in steps], color="#3b75af", label="outcomes/s")
    ax.set_xticks(list(x), [str(s.workers) for s in steps])
    ax.set_xlabel("engine workers (added one by one, then removed)")
    ax.set_ylabel("outcomes per second")
    twin = ax.twinx()
    twin.plot(list(x), [s.stopped_s for s in steps], "o-", color="#c0392b",
              label="stopped by the rebalance (s)")
    twin.set_ylabel("seconds without progress (one partition)")
    fig.legend(loc="upper right")
    ax.set_title("bank chaos --hosts --scale")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
