"""`bank up`: the embedded broker, the topics and the engine workers, kept alive.

Workers are child processes (`bank worker`, `bank views`); one that dies is
restarted after a backoff that doubles with each exit in quick succession
(a crash loop shows as a growing delay and a crash count, not as a busy
restart). Everything started here is stopped on exit, Ctrl-C included.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Callable

from contextlib import ExitStack

from kbank.streams.broker import Host, KafkaCluster
from kbank.streams.config import Settings
from kbank.streams.health import HALTED_EXIT_CODE, read_crashes, record_crash
from kbank.streams.files import private_dir, write_private
from kbank.streams.principals import secure_deployment
from kbank.streams.topics import ensure_topics


MAX_BACKOFF_S = 60.0   # a worker that keeps halting is retried about once a minute


class WorkerPool:
    """Worker processes (`bank worker`, or `bank views` with web ports) restarted if they die."""

    def __init__(self, settings: Settings, count: int, log_dir: str | None = None,
                 command: str = "worker", web_ports: list[int] | None = None,
                 hosts: dict[str, Host] | None = None) -> None:
        self.settings = settings
        self.hosts = hosts or {}                   # where a worker runs, if not here
        self.log_dir = log_dir
        self.command = command
        self.web_ports = web_ports or []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.crashes: dict[str, int] = {}          # exits of each worker not asked for
        self._started_at: dict[str, float] = {}
        self._streak: dict[str, int] = {}          # exits in quick succession
        self._restart_at: dict[str, float] = {}
        for i in range(count):
            self.start(str(i))

    def url(self, worker_id: str) -> str:
        host = self.hosts[worker_id].address if worker_id in self.hosts else self.settings.web_host
        return f"http://{host}:{self.web_ports[int(worker_id)]}"

    def start(self, worker_id: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        placed = self.hosts.get(worker_id)
        where = {"BANK_WEB_HOST": placed.address, "BANK_WEB_BIND": placed.address} if placed else {}
        env = {**os.environ, **self.settings.env(), **where, **(extra_env or {})}
        out = subprocess.DEVNULL
        if self.log_dir:
            out = open(os.path.join(self.log_dir, f"{self.command}-{worker_id}.log"), "ab")
        args = [*(placed.launcher if placed else ()), sys.executable, "-m", "kbank.streams.cli",
                self.command, "--worker-id", worker_id]
        if self.web_ports:
            args += ["--web-port", str(self.web_ports[int(worker_id)])]
        if self.command == "worker" and self.settings.engine_metrics_port:
            args += ["--metrics-port", str(self.settings.engine_metrics_port + int(worker_id))]
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        self.procs[worker_id] = proc
        self._started_at[worker_id] = time.monotonic()
        self._restart_at.pop(worker_id, None)
        return proc

    def kill(self, worker_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[worker_id]
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(30)

    def stop(self, worker_id: str) -> None:
        """Graceful stop (SIGTERM): the worker leaves the group."""
        proc = self.procs.pop(worker_id)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart_dead(self, backoff: bool = False) -> list[str]:
        """Restart workers that exited; with `backoff`, after 0.5 s doubling up to a minute
        while they keep exiting within a minute of their start. Each exit is printed with
        its reason: the worker's own line if it halted (an error no retry fixes)."""
        restarted = []
        now = time.monotonic()
        for wid, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            if wid not in self._restart_at:
                self.crashes[wid] = self.crashes.get(wid, 0) + 1
                quick = now - self._started_at.get(wid, now) < 60
                self._streak[wid] = self._streak.get(wid, 0) + 1 if quick else 1
                delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (self._streak[wid] - 1)) if backoff else 0.0
                self._restart_at[wid] = now + delay
                reason = exit_reason(proc.returncode)
                if proc.returncode == HALTED_EXIT_CODE:
                    halt = read_crashes(self.settings.state_dir).get(self.command, {}) \
                        .get(wid, {}).get("halt")
                    reason = f"{reason}: {halt}" if halt else reason
                print(f"{self.command} {wid} exited ({reason}); crash "
                      f"{self.crashes[wid]}, restarting in {delay:.1f} s", flush=True)
                record_crash(self.settings.state_dir, self.command, wid, self.crashes[wid], reason)
            if now >= self._restart_at[wid]:
                self.start(wid)
                restarted.append(wid)
        return restarted

    def stop_all(self) -> None:
        for wid in list(self.procs):
            self.stop(wid)


def exit_reason(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def views_health(urls: list[str]) -> list[dict] | None:
    """Every views worker's /health, or None while one is unreachable or not ready (not
    accepting requests, or in a rebalance: its /health answers 503 then)."""
    import urllib.request

    import orjson

    healths = []
    try:
        for url in urls:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                health = orjson.loads(resp.read())
            if health["rebalancing"] or not health["accepting_requests"]:
                return None
            healths.append(health)
    except (OSError, ValueError, KeyError):
        return None
    return healths


def wait_for_views(urls: list[str], partitions: int, timeout_s: float = 120.0) -> bool:
    """Wait until the views workers accept requests and together own every ledger partition."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        healths = views_health(urls)
        if healths is not None and sorted(
                p for h in healths for p in h["ledger_partitions"]) == list(range(partitions)):
            return True
        time.sleep(0.5)
    return False


def engine_report(url: str) -> str | None:
    """What a views worker's /health says of the engine, as one line (None: no answer)."""
    import urllib.error
    import urllib.request

    import orjson

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            health = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:   # 503: not ready, but it still says
        try:
            health = orjson.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    state = health.get("engine")
    if state == "stalled":
        stall = health["stall"]
        return (f"ENGINE STALLED on partitions {stall['partitions']} since "
                f"{time.strftime('%H:%M:%S', time.localtime(stall['since'] / 1000))}: "
                f"{stall['cause']}")
    return None if state is None else f"engine {'progressing' if state == 'ok' else state}"


def wait_for_views_caught_up(urls: list[str], timeout_s: float = 300.0) -> bool:
    """Wait until every views worker has folded its sources to their end and written all of
    it to its store, and that stays so for a second."""
    deadline = time.monotonic() + timeout_s
    settled = 0
    while time.monotonic() < deadline:
        healths = views_health(urls)
        caught_up = healths is not None and all(
            h["lag"] == 0 and h["changelog_backlog"] == 0 for h in healths)
        settled = settled + 1 if caught_up else 0
        if settled >= 5:
            return True
        time.sleep(0.2)
    return False


def _provision(settings: Settings, cluster: KafkaCluster, credentials: str) -> Settings:
    """The principals and ACLs of the secured embedded broker, and where their credentials
    are: every process started here connects as its role's principal."""
    settings = secure_deployment(settings, cluster.admin_config(), credentials)
    print(f"Kafka is secured (SASL/SCRAM-SHA-512, ACLs, see SECURITY.md); each principal's "
          f"librdkafka properties are in {credentials} (readable by you only): "
          f"export BANK_KAFKA_CREDENTIALS={credentials} for other bank commands; a payments "
          f"service of your own gets a principal of its own with `bank kafka-config client "
          f"NAME --accounts a,b` (its requests topic, its outcomes topic, its accounts only)",
          flush=True)
    return settings


def operator_key(settings: Settings, path: str) -> str:
    """The operator API key `bank up` made for this data directory (made now if there is
    none, or it no longer works), kept in `path`, readable by the user only."""
    from kbank.streams.apikeys import OPERATOR, lookup
    from kbank.streams.keystore import create_key, list_keys

    if os.path.exists(path):
        token = open(path).read().strip()
        found, _ = lookup({k.id: k for k in list_keys(settings)}, token)
        if found is not None and found.refusal(int(time.time() * 1000)) is None:
            return token
    token = create_key(settings, OPERATOR, label="made by bank up for the operator").token
    write_private(path, token + "\n")
    return token


# what `bank up --demo` runs once everything is ready: (settings, web URL, API key) -> passed
ReadyHook = Callable[[Settings, "str | None", str], bool]


def _start_pools(settings: Settings, log_dir: str | None, workers: int, views: int,
                 web_port: int, webhook_workers: int) -> list[WorkerPool]:
    """Every worker process `bank up` runs: the engine's, the views' (second), the webhook
    workers, the gateway, the reconciler and the webhook worker of its breaks."""
    pools = [WorkerPool(settings, workers, log_dir),
             WorkerPool(settings, views, log_dir, command="views",
                        web_ports=[web_port + i for i in range(views)]),
             WorkerPool(settings, webhook_workers, log_dir, command="webhooks"),
             WorkerPool(settings, 1, log_dir, command="gateway"),
             WorkerPool(settings, 1, log_dir, command="reconciler"),
             WorkerPool(settings, min(webhook_workers, 1), log_dir, command="break-webhooks")]
    print(f"{workers} engine worker(s), {webhook_workers} webhook worker(s), the Kafka "
          f"gateway, the reconciler and its breaks' webhooks started; KAFKA_BOOTSTRAP_SERVERS="
          f"{settings.bootstrap_servers}", flush=True)
    if webhook_workers:
        hosts = settings.webhook_allowed_hosts or "none: set BANK_WEBHOOK_ALLOWED_HOSTS " \
            "to the hosts (or host:port) of your receivers"
        print(f"webhooks (POST /webhooks) may call: {hosts}", flush=True)
    return pools


def up(settings: Settings, workers: int, broker_port: int | None, demo: ReadyHook | None,
       views: int = 2, web_port: int = 8080, brokers: int = 1, data_dir: str | None = None,
       clean: bool = False, once: bool = False, webhook_workers: int = 1) -> int:
    """Start everything, optionally run `demo` once it is ready, and serve until Ctrl-C."""
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    data_dir = data_dir or os.path.join(settings.state_dir, "kafka")
    started = time.monotonic()
    embedded = not settings.bootstrap_servers
    with ExitStack() as stack:
        if embedded:
            cluster = KafkaCluster(data_dir, brokers, broker_port, clean, secured=True).start()
            stack.callback(cluster.stop)
            bootstrap = cluster.bootstrap_servers
            # the stores live beside the broker's data: they survive and go together
            settings = replace(settings, state_dir=os.path.join(data_dir, "stores"),
                               replication_factor=3 if brokers >= 3 else 1,
                               bootstrap_servers=bootstrap)
            print(f"Apache Kafka ({brokers} KRaft node{'s' if brokers > 1 else ''}) ready on "
                  f"{bootstrap} in {time.monotonic() - started:.1f} s; data and logs in {data_dir}",
                  flush=True)
            settings = _provision(settings, cluster, os.path.join(data_dir, "credentials"))
        bootstrap = settings.bootstrap_servers
        counts = ensure_topics(settings)
        print(f"topics ready: {', '.join(f'{t}[{n}]' for t, n in counts.items())}", flush=True)
        key_path = os.path.join(data_dir, "credentials", "operator.key")
        token = operator_key(settings, key_path)
        print(f"operator API key (send it as Authorization: Bearer <key>; sign in to the console "
              f"with it; kept in {key_path}):\n  {token}", flush=True)
        log_dir = os.path.join(data_dir, "logs") if embedded else None
        for private in (settings.state_dir, log_dir):     # stores, failure counts, logs
            if private is not None:
                private_dir(private)
        pools = _start_pools(settings, log_dir, workers, views, web_port, webhook_workers)
        urls = [pools[1].url(str(i)) for i in range(views)]
        try:
            if views:
                print(f"{views} views worker(s) starting: {', '.join(urls)}", flush=True)
                if not wait_for_views(urls, settings.partitions):
                    print("views workers did not become ready in 120 s", flush=True)
                else:
                    print(f"web endpoint ready: {urls[0]}  (try {urls[0]}/stats, "
                          f"{urls[0]}/openapi.yaml)", flush=True)
                    print(f"operator's console: {urls[0]}/  (open it in a browser)", flush=True)
            if demo is not None:
                ok = demo(settings, urls[0] if views else None, token)
                if once:
                    return 0 if ok else 1
            print("serving; Ctrl-C to stop", flush=True)
            said, asked_at = "engine progressing", 0.0
            while not stopping:
                for pool in pools:
                    pool.restart_dead(backoff=True)
                if views and time.monotonic() - asked_at > 5:   # a stall, said once as it starts
                    asked_at = time.monotonic()                 # and once as it ends
                    report = engine_report(urls[0])
                    if report is not None and report.split(" since")[0] != said.split(" since")[0]:
                        print(report, flush=True)
                        said = report
                time.sleep(0.5)
        finally:
            print("stopping workers", flush=True)
            for pool in pools:
                pool.stop_all()
    return 0
