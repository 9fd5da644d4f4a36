"""`bank bench --peer quix`: the engine against the pipeline a Python user would write with
Quix Streams instead (kbank/bench/quix_peer.py), draining the same backlog on the same
broker, interleaved, with 1 and 2 workers each, round after round (issue 44).

Each side gets the same accounts funded before its backlog is written (the engine opens
them; the peer takes them as deposits, then is stopped), then the same transfers, written
while nothing runs; its workers are then started. A side's rate is the backlog over the
time from its first transfer decided to its last completed, read off the broker's append
times (the engine's first outcome, a debit's, or the peer's first record to its
repartition topic; then each side's last final outcome), so neither side's start is in it;
its CPU per transfer is every process's from start to the last outcome.
Each side's outcomes are checked: every transfer completed, once.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from confluent_kafka import TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                  ConfigResource, NewTopic, ResourceType)

from kbank.bench.backlog import backlog_transfers, drain_speed
from kbank.bench.procs import cpu_by_kind
from kbank.streams import kafka, topics
from kbank.streams.client import OutcomeTail, end_offset
from kbank.streams.config import Settings
from kbank.streams.progress import progress_bar, wait_with_progress

PIPELINE = Path(__file__).with_name("quix_peer.py")


def peer_requirements() -> list[str]:
    """The `peer` extra of this project's metadata: what the peer's virtualenv installs."""
    wanted = []
    for line in importlib.metadata.requires("kbank") or []:
        requirement, _, marker = line.partition(";")
        if re.search(r"""extra\s*==\s*["']peer["']""", marker):
            wanted.append(requirement.strip())
    if not wanted:
        raise RuntimeError("kbank's metadata has no `peer` extra: reinstall the project "
                           "(pip install -e .)")
    return wanted


def peer_python(venv: str | None = None) -> str:
    """The peer's interpreter, in a virtualenv of its own (BANK_PEER_VENV, default
    ./.venv-peer), made and filled from the `peer` extra the first time: Quix Streams pins
    an older confluent-kafka than this project runs, so the two cannot share one."""
    venv = venv or os.environ.get("BANK_PEER_VENV") or os.path.abspath(".venv-peer")
    python = os.path.join(venv, "bin", "python")
    requirements = peer_requirements()
    check = [python, "-I", "-c", "import quixstreams, sys; "
             "sys.exit(quixstreams.__version__ != sys.argv[1])",
             requirements[0].partition("==")[2]]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"peer: installing {', '.join(requirements)} into {venv} (once)", file=sys.stderr,
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *requirements], check=True)
    subprocess.run(check, check=True)
    return python


def pipeline_version(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-I", "-c",
                          "import quixstreams, confluent_kafka, importlib.metadata, json; "
                          "print(json.dumps({'quixstreams': quixstreams.__version__, "
                          "'confluent_kafka': importlib.metadata.version('confluent-kafka'), "
                          "'librdkafka': confluent_kafka.libversion()[0]}))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


class OutcomeCount:
    """The peer's final outcomes, by request id: completed, refused, and ids seen twice."""

    def __init__(self, settings: Settings, wanted: set[str]) -> None:
        self.wanted, self.done, self.twice, self.refused = wanted, 0, 0, 0
        self.first = self.last = None
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._tail = OutcomeTail(settings, kafka.ADMIN, f"peer-{uuid.uuid4().hex[:6]}",
                                 self._count, from_beginning=True, batch=20_000, wait_s=0.05)

    def _count(self, msgs: list) -> None:
        with self._lock:
            for msg in msgs:
                if msg.error() or msg.value() is None:
                    continue
                outcome = json.loads(msg.value())
                request_id = outcome.get("request_id")
                if request_id not in self.wanted:
                    continue
                if request_id in self._seen:
                    self.twice += 1
                    continue
                self._seen.add(request_id)
                self.done += 1
                self.refused += outcome.get("status") != "completed"
                appended = msg.timestamp()[1]
                self.first = appended if self.first is None else min(self.first, appended)
                self.last = appended if self.last is None else max(self.last, appended)

    def close(self) -> None:
        self._tail.close()


class QuixWorkers:
    """`count` processes of the peer pipeline, one consumer group."""

    def __init__(self, python: str, config: dict, count: int, log_dir: str) -> None:
        self.procs = []
        for i in range(count):
            log = open(os.path.join(log_dir, f"quix-{i}.log"), "ab")
            worker_config = {**config, "state_dir": os.path.join(config["state_dir"], str(i))}
            self.procs.append(subprocess.Popen(
                [python, "-I", str(PIPELINE), json.dumps(worker_config)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        dead = [p for p in self.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a Quix peer worker exited with {dead[0].returncode}; see its "
                               f"log beside the bench's state")

    def stop(self) -> None:
        """SIGTERM (Quix commits its checkpoint and leaves the group), then wait."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _make_topics(settings: Settings) -> None:
    """The peer's input and outcomes (appended-time stamped, as the engine's are)."""
    admin = AdminClient(kafka.client_config(settings, kafka.ADMIN))
    futures = admin.create_topics([
        NewTopic(settings.topic(topics.REQUESTS), settings.partitions,
                 settings.replication_factor),
        NewTopic(settings.topic(topics.OUTCOMES), settings.partitions,
                 settings.replication_factor, config={"message.timestamp.type": "LogAppendTime"})])
    for future in futures.values():
        future.result()


def _stamped_on_append(settings: Settings, group: str) -> str:
    """The peer's repartition topic (made by Quix at its first start), set to take the
    broker's append time: its first record is when the peer decided its first transfer, as
    the engine's first outcome (a debit's) is; the peer's own outcomes are only final ones."""
    admin = AdminClient(kafka.client_config(settings, kafka.ADMIN))
    found = [name for name in admin.list_topics(timeout=30).topics
             if name.startswith("repartition__") and group in name]
    if len(found) != 1:
        raise RuntimeError(f"expected one repartition topic of the Quix group {group}, found "
                           f"{found}")
    entry = ConfigEntry("message.timestamp.type", "LogAppendTime",
                        incremental_operation=AlterConfigOpType.SET)
    for future in admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, found[0], incremental_configs=[entry])]).values():
        future.result()
    return found[0]


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    consumer = kafka.consumer(settings, kafka.ADMIN)
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: end_offset(consumer, TopicPartition(topic, p)) for p in parts}
    finally:
        consumer.close()


def _first_appended(settings: Settings, topic: str, starts: dict[int, int]) -> int:
    """The earliest append time of the records written to `topic` after `starts`
    (committed or not: an aborted attempt was work too)."""
    consumer = kafka.consumer(settings, kafka.ADMIN, **{"isolation.level": "read_uncommitted"})
    try:
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
        firsts: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(firsts) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    firsts.setdefault(msg.partition(), msg.timestamp()[1])
        if not firsts:
            raise RuntimeError(f"no record in {topic} after {starts}")
        return min(firsts.values())
    finally:
        consumer.close()


def _write(producer, topic: str, requests: Iterator[tuple[str, dict]], total: int,  # noqa: ANN001
           label: str) -> None:
    bar = progress_bar(label, "requests", total=total)
    for i, (key, request) in enumerate(requests):
        kafka.produce_waiting(producer, topic, key=key.encode(),
                              value=json.dumps(request).encode())
        if i % 10_000 == 0:
            bar.update(i - bar.n)
    producer.flush()
    bar.update(total - bar.n)
    bar.close()


def _run_until(python: str, config: dict, workers: int, log_dir: str, count: OutcomeCount,
               label: str, broker_pids: list[int]) -> dict[str, float]:
    """Start the workers, wait until `count` has every request it wants, stop them; the CPU
    they and the broker used meanwhile."""
    quix = QuixWorkers(python, config, workers, log_dir)
    pids = {"quix": quix.pids, "broker": broker_pids}
    before = cpu_by_kind(pids)
    try:
        def done() -> int:
            quix.check_alive()
            return count.done
        wait_with_progress(done, len(count.wanted), label, "requests")
        after = cpu_by_kind(pids)
    finally:
        quix.stop()
    return {kind: after[kind] - before[kind] for kind in after}


def quix_drain(settings: Settings, *, workers: int, accounts: int, backlog: int,
               broker_pids: list[int], deposit: int = 10_000_000,
               seed: int = 3) -> dict[str, object]:
    """The peer's drain of the backlog, measured as `backlog.drain_speed` measures the engine's."""
    python = peer_python()
    settings = replace(settings, topic_prefix=f"bench-peer-{uuid.uuid4().hex[:8]}-")
    _make_topics(settings)
    work_dir = tempfile.mkdtemp(prefix="bank-bench-peer-", dir=settings.state_dir)
    config = {"connection": kafka.client_config(settings, kafka.ADMIN),
              "requests": settings.topic(topics.REQUESTS),
              "outcomes": settings.topic(topics.OUTCOMES),
              "group": settings.topic("quix"), "state_dir": os.path.join(work_dir, "state")}
    producer = kafka.producer(settings, kafka.ADMIN, **{"linger.ms": 20})
    requests_topic = config["requests"]

    funded = OutcomeCount(settings, {f"d{i}" for i in range(accounts)})
    _write(producer, requests_topic, ((f"a{i}", {"type": "deposit", "request_id": f"d{i}",
                                                 "account": f"a{i}", "amount": deposit})
                                      for i in range(accounts)), accounts, "deposits")
    try:
        _run_until(python, config, workers, work_dir, funded, "funding", broker_pids)
    finally:
        funded.close()

    repartition = _stamped_on_append(settings, config["group"])
    starts = _ends(settings, repartition)
    transfers = list(backlog_transfers(accounts, backlog, seed))
    _write(producer, requests_topic, ((payer, {"type": "transfer", "request_id": rid,
                                               "from": payer, "to": receiver, "amount": 1})
                                      for rid, payer, receiver in transfers),
           backlog, "backlog (no peer running)")
    drained = OutcomeCount(settings, {rid for rid, _, _ in transfers})
    try:
        used = _run_until(python, config, workers, work_dir, drained, "draining",
                          broker_pids)
    finally:
        drained.close()
    shutil.rmtree(work_dir, ignore_errors=True)
    first = min(drained.first, _first_appended(settings, repartition, starts))
    seconds = max(1e-3, (drained.last - first) / 1000)
    return {"mode": "peer", "peer": "quix", "backlog": backlog, "workers": workers,
            "accounts": accounts, "drain_s": round(seconds, 2),
            "drain_transfers_per_s": round(backlog / seconds, 1),
            "completed": drained.done - drained.refused, "refused": drained.refused,
            "applied_twice": drained.twice,
            "cpu_us_per_transfer": {kind: round(cpu / backlog * 1e6, 1)
                                    for kind, cpu in used.items()},
            "versions": pipeline_version(python)}


def compare(settings: Settings, *, rounds: int, worker_counts: list[int], accounts: int,
            backlog: int, broker_pids: list[int]) -> Iterator[dict[str, object]]:
    """Each round, for each worker count, the engine's drain and the peer's, the one that
    goes first alternating by round so a drift of the machine falls on both."""
    sides = {"engine": lambda workers: drain_speed(settings, workers=workers, views=0,
                                                   accounts=accounts, backlog=backlog,
                                                   broker_pids=broker_pids),
             "quix": lambda workers: quix_drain(settings, workers=workers, accounts=accounts,
                                                backlog=backlog, broker_pids=broker_pids)}
    for round_number in range(1, rounds + 1):
        for workers in worker_counts:
            order = ("engine", "quix") if round_number % 2 else ("quix", "engine")
            for side in order:
                print(f"round {round_number}/{rounds}, {workers} worker(s): {side}",
                      file=sys.stderr, flush=True)
                yield {**sides[side](workers), "side": side, "round": round_number}


def summary(runs: list[dict]) -> list[dict[str, object]]:
    """Per worker count: each side's median rate and median CPU per transfer of each kind
    of process, and the ratio of the medians (engine over peer)."""
    rows = []
    for workers in sorted({r["workers"] for r in runs}):
        row: dict[str, object] = {"workers": workers}
        for side in ("engine", "quix"):
            mine = [r for r in runs if r["workers"] == workers and r["side"] == side]
            row[side] = {"transfers_per_s": statistics.median(r["drain_transfers_per_s"]
                                                              for r in mine),
                         "rounds": [r["drain_transfers_per_s"] for r in mine],
                         "cpu_us_per_transfer": {
                             kind: statistics.median(r["cpu_us_per_transfer"][kind] for r in mine)
                             for kind in mine[0]["cpu_us_per_transfer"]}}
        row["ratio"] = round(row["engine"]["transfers_per_s"] / row["quix"]["transfers_per_s"], 2)
        rows.append(row)
    return rows


def summary_table(rows: list[dict]) -> str:
    lines = ["| workers | engine (median; rounds) | Quix (median; rounds) | ratio | engine CPU us "
             "per transfer | Quix CPU us per transfer |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [str(row["workers"])]
        for side in ("engine", "quix"):
            mine = row[side]
            cells.append(f"{mine['transfers_per_s']:,.0f}/s ("
                         + ", ".join(f"{x:,.0f}" for x in mine["rounds"]) + ")")
        cells.append(f"{row['ratio']:.2f}")
        for side in ("engine", "quix"):
            cells.append(", ".join(f"{kind} {us:.0f}" for kind, us in
                                   row[side]["cpu_us_per_transfer"].items()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(runs: list[dict], path: str) -> str:
    """peer.png: each side's drain rate per round and worker count (bars: the median), and
    CPU per transfer by process kind (median)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary(runs)
    fig, (rates, cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"engine": "#3b75af", "quix": "#e1812c"}
    for i, row in enumerate(rows):
        for j, side in enumerate(("engine", "quix")):
            x = i * 3 + j
            rates.bar(x, row[side]["transfers_per_s"], color=colors[side],
                      label=side if i == 0 else None)
            rates.scatter([x] * len(row[side]["rounds"]), row[side]["rounds"], color="k", s=12,
                          zorder=3)
            bottom = 0.0
            for k, (kind, us) in enumerate(row[side]["cpu_us_per_transfer"].items()):
                if kind == "broker JIT":     # a part of "broker", not beside it
                    continue
                cpu.bar(x, us, bottom=bottom, color=colors[side], alpha=1 - 0.45 * k,
                        edgecolor="k", label=f"{side}: {kind}" if i == 0 else None)
                bottom += us
        rates.text(i * 3 + 0.5, max(row["engine"]["transfers_per_s"],
                                    row["quix"]["transfers_per_s"]) * 1.02,
                   f"{row['ratio']:.2f}x", ha="center")
    for ax in (rates, cpu):
        ax.set_xticks([i * 3 + 0.5 for i in range(len(rows))],
                      [f"{row['workers']} worker(s)" for row in rows])
        ax.legend(fontsize=8)
    rates.set_ylabel("transfers/s, first decided to last completed (dots: rounds)")
    rates.set_title(f"draining {runs[0]['backlog']:,} transfers among {runs[0]['accounts']:,} "
                    f"accounts")
    cpu.set_ylabel("CPU us per transfer (median)")
    cpu.set_title("where the CPU goes: the workers, then the broker")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
