"""The embedded broker: Apache Kafka itself, one KRaft node or three, on loopback.

Used for development, the demo, the tests and CI when KAFKA_BOOTSTRAP_SERVERS
is not set. The jars are the pinned release of pom.xml (beside this file),
which Maven resolves from Maven Central into BANK_KAFKA_LIBS once (the
machine's `mvn`, or the Maven Wrapper `mvnw` beside this file, which needs
only Java). Each node runs `kafka.Kafka` in a JVM of its own: combined
broker+controller, data under <data_dir>/node-<id>, logs under
<data_dir>/logs. A data directory survives restarts; storage is formatted
only when a node has none.
"""
from __future__ import annotations

import atexit
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kbank.streams.files import private_dir

KAFKA_VERSION = "4.4.0"  # keep in step with pom.xml
ADMIN_USER = "admin"        # the secured broker's only super user
SCRAM_MECHANISM = "SCRAM-SHA-512"
_HERE = Path(__file__).resolve().parent
# a fixed heap, touched at start: the broker's memory is what it is from its first second,
# not a heap that grows under load for minutes (measured: 480 -> 690 MB over a 10-minute run)
_NODE_HEAP = ("-Xms512m", "-Xmx512m", "-XX:+AlwaysPreTouch")


class BrokerError(RuntimeError):
    """The embedded broker could not be installed or started; the message says why."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), 0.2).close()
        return True
    except OSError:
        return False


def libs_dir() -> Path:
    """Where the Kafka jars live (BANK_KAFKA_LIBS, default ~/.cache/kbank/kafka-<version>)."""
    default = Path.home() / ".cache" / "kbank" / f"kafka-{KAFKA_VERSION}"
    return Path(os.environ.get("BANK_KAFKA_LIBS") or default)


def java_command() -> str:
    """A Java 17+ runtime (JAVA_HOME, else PATH), or a BrokerError saying what to install."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise BrokerError("the embedded Kafka broker needs Java 17 or newer (apt-get install "
                          "openjdk-17-jre-headless), or set KAFKA_BOOTSTRAP_SERVERS")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if not match or int(match.group(1)) < 17:
        raise BrokerError(f"Apache Kafka {KAFKA_VERSION} needs Java 17+, found: {out.splitlines()[:1]}")
    return java


def install_jars(quiet: bool = True) -> Path:
    """Resolve the pinned Kafka release's jars from Maven Central, once."""
    target = libs_dir()
    marker = target / ".complete"
    if marker.exists():
        return target
    java_command()
    mvn = shutil.which("mvn") or str(_HERE / "mvnw")
    print(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {target} ...",
          flush=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-B", *(["-q"] if quiet else []), "-f", str(_HERE / "pom.xml"),
           "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"maven could not fetch the Kafka jars:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    marker.write_text(KAFKA_VERSION)
    return target


def _cluster_id() -> str:
    """A 22-character URL-safe base64 UUID, as `kafka-storage random-uuid` makes: like Kafka's
    Uuid.randomUuid, never one starting with "-", which the tool's argument parser would take
    for an option (1 in 64 ids; CI met one)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


_LOG4J = """Configuration:
  Appenders:
    RollingFile:
      name: file
      fileName: "{log}"
      filePattern: "{log}.%i"
      PatternLayout: {{pattern: "[%d] %p %m (%c)%n"}}
      SizeBasedTriggeringPolicy: {{size: 50MB}}
      DefaultRolloverStrategy: {{max: 3}}
  Loggers:
    Root: {{level: INFO, AppenderRef: [{{ref: file}}]}}
    Logger:
      - {{name: kafka.request.logger, level: WARN}}
      - {{name: org.apache.kafka.storage.internals.log, level: WARN}}
      - {{name: kafka.log, level: WARN}}
"""


@dataclass
class KafkaNode:
    """One combined broker+controller JVM."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"             # the address it listens on and advertises
    launcher: tuple[str, ...] = ()      # a command its JVM runs under (a network namespace's)
    via: str | None = None              # host:port of a TCP proxy to it, see _with_proxied

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "logs" / f"server-{self.node_id}.log"

    def properties(self, voters: str, replication: int, admin_password: str | None = None) -> str:
        """server.properties; with `admin_password`, secured (see _secured_properties)."""
        min_isr = min(2, replication)
        if admin_password is None:
            listeners = [
                f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ]
        else:
            listeners = self._secured_properties(admin_password)
        if self.via:
            listeners = self._with_proxied(listeners)
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={voters}",
            "controller.listener.names=CONTROLLER",
            *listeners,
            f"log.dirs={self.data_dir / 'log'}",
            f"offsets.topic.replication.factor={replication}",
            f"transaction.state.log.replication.factor={replication}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={replication}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            f"default.replication.factor={replication}",
            f"min.insync.replicas={min_isr}",
            "unclean.leader.election.enable=false",   # Kafka's default, stated: never elect a
                                                      # replica that lacks acknowledged writes
            "offsets.topic.num.partitions=8",
            "transaction.state.log.num.partitions=8",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "num.network.threads=2",
            "num.io.threads=4",
            "log.segment.bytes=268435456",
            # the transaction coordinator and the group coordinator answer fast on loopback
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
            "",
        ])

    def _with_proxied(self, listeners: list[str]) -> list[str]:
        """A second listener, PROXIED on PROXIED_PORT, that advertises `via`: a client that
        bootstraps through a TCP proxy to it (Toxiproxy's, which delays what passes) is
        told the proxies' addresses and so sends everything through them. Same security as
        the first listener; the brokers talk to each other on the first."""
        first = next(line for line in listeners if line.startswith("listeners=")).split("=", 1)[1]
        protocol = first.split(":", 1)[0]
        out = []
        for line in listeners:
            key, _, value = line.partition("=")
            if key == "listeners":
                line = f"{line},PROXIED://{self.host}:{PROXIED_PORT}"
            elif key == "advertised.listeners":
                line = f"{line},PROXIED://{self.via}"
            elif key == "listener.security.protocol.map":
                line = f"{line},PROXIED:{protocol}"
            out.append(line)
        if protocol == "SASL_PLAINTEXT":
            out.append("listener.name.proxied.scram-sha-512.sasl.jaas.config="
                       "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        return out

    def _secured_properties(self, admin_password: str) -> list[str]:
        """SASL on every listener and Kafka's StandardAuthorizer, denying what no ACL allows.

        Clients and brokers authenticate with SCRAM-SHA-512 (the admin's credential is
        written into the metadata when storage is formatted, KIP-900); the controllers, for
        which KRaft does not support SCRAM, with PLAIN and the same admin user. The admin is
        the only super user: every other principal gets exactly its ACLs
        (kbank.streams.principals)."""
        scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{ADMIN_USER}" password="{admin_password}";')
        plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                 f'username="{ADMIN_USER}" password="{admin_password}" '
                 f'user_{ADMIN_USER}="{admin_password}";')
        return [
            f"listeners=SASL_PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://{self.host}:{self.port}",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain}",
            f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{ADMIN_USER}",
        ]


# A node runs in a session of its own (a Ctrl-C meant for `bank up` reaches it through
# stop(), in order), so it must still die with its supervisor when that is killed hard:
# setpriv (util-linux) sets the parent-death signal, then execs the JVM.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
PID_FILE = "kafka.pid"


def _live_holder(node: "KafkaNode") -> int | None:
    """The pid of a JVM still running on this node's data directory, if one is."""
    try:
        pid = int((node.data_dir / PID_FILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"kafka.Kafka" in cmdline and str(node.data_dir).encode() in cmdline else None


PROXIED_PORT = 9094   # a node's second listener, when it has one (KafkaNode.via)


@dataclass(frozen=True)
class Host:
    """Where a process runs when not on this machine's loopback: its address and the command
    that starts it there (`ip netns exec NAME` for a network namespace of kbank.chaos.hosts)."""

    address: str
    launcher: tuple[str, ...]


class KafkaCluster:
    """One or three Apache Kafka KRaft nodes on 127.0.0.1 (or each on a host of its own),
    stopped on exit."""

    def __init__(self, data_dir: str | os.PathLike[str], nodes: int = 1, port: int | None = None,
                 clean: bool = False, secured: bool = False,
                 hosts: list[Host] | None = None, via: list[str] | None = None) -> None:
        if nodes < 1:
            raise BrokerError("a cluster needs at least one node")
        self.data_dir = Path(data_dir).resolve()
        if clean:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        private_dir(self.data_dir)            # node dirs hold secrets, logs name principals
        private_dir(self.data_dir / "logs")
        if hosts is not None:
            if len(hosts) != nodes:
                raise BrokerError(f"{nodes} nodes need {nodes} hosts, not {len(hosts)}")
            self.nodes = [KafkaNode(i + 1, port or 9092, 9093, self.data_dir / f"node-{i + 1}",
                                    host=h.address, launcher=h.launcher,
                                    via=via[i] if via else None) for i, h in enumerate(hosts)]
        else:
            ports = [port + i for i in range(nodes)] if port else [free_port() for _ in range(nodes)]
            self.nodes = [KafkaNode(i + 1, ports[i], free_port(), self.data_dir / f"node-{i + 1}")
                          for i in range(nodes)]
        self.replication = 3 if nodes >= 3 else 1
        self.admin_password = _admin_password(self.data_dir) if secured else None
        self.voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)
        self.started_in_s = 0.0

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def admin_config(self) -> dict[str, str]:
        """librdkafka settings of the super user (none on an unsecured cluster)."""
        if self.admin_password is None:
            return {}
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": SCRAM_MECHANISM,
                "sasl.username": ADMIN_USER, "sasl.password": self.admin_password}

    def start(self, timeout_s: float = 120.0) -> "KafkaCluster":
        """Install the jars if needed, format new storage, start every node, wait until ready."""
        for node in self.nodes:
            if (holder := _live_holder(node)) is not None:
                raise BrokerError(f"node {node.node_id} of {self.data_dir} is still running as pid "
                                  f"{holder} (left by a bank up that did not stop it?): stop it "
                                  f"(kill {holder}) or choose another --data-dir")
            if _port_open(node.port, node.host):
                raise BrokerError(f"port {node.port} is taken (another broker?): choose --broker-port "
                                  "or point KAFKA_BOOTSTRAP_SERVERS at it")
        libs = install_jars()
        t0 = time.monotonic()
        self._format(libs)
        atexit.register(self.stop)
        for node in self.nodes:
            self.start_node(node.node_id, wait=False)
        self.wait_ready(timeout_s)
        self.started_in_s = time.monotonic() - t0
        return self

    def _config_path(self, node: KafkaNode) -> Path:
        path = node.data_dir / "server.properties"
        private_dir(node.data_dir)
        path.write_text(node.properties(self.voters, self.replication, self.admin_password))
        path.chmod(0o600)   # it holds the admin's password when secured
        (node.data_dir / "log4j2.yaml").write_text(_LOG4J.format(log=node.log_path))
        return path

    def _format(self, libs: Path) -> None:
        fresh = [n for n in self.nodes if not (n.data_dir / "log" / "meta.properties").exists()]
        if not fresh:
            return
        if len(fresh) != len(self.nodes):
            raise BrokerError(f"{self.data_dir} holds some nodes' storage but not all: start with "
                              "--clean or choose another --data-dir")
        cluster_id = _cluster_id()
        for node in fresh:
            args = ["-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
                    "-t", cluster_id, "-c", str(self._config_path(node))]
            if self.admin_password is not None:
                args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={ADMIN_USER},"
                                        f"password={self.admin_password}]"]
            # the arguments in a file only the user reads (the java launcher's @argfile): on a
            # command line the super user's password would be in /proc for anyone to see
            argfile = node.data_dir / "format.args"
            argfile.unlink(missing_ok=True)
            fd = os.open(argfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("\n".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"'
                                    for a in args) + "\n")
            try:
                done = subprocess.run([java_command(), f"@{argfile}"], capture_output=True,
                                      text=True, stdin=subprocess.DEVNULL)
            finally:
                argfile.unlink(missing_ok=True)
            if done.returncode != 0:
                raise BrokerError(f"formatting node {node.node_id} failed: {done.stdout}{done.stderr}")

    def start_node(self, node_id: int, wait: bool = True, timeout_s: float = 120.0) -> None:
        """Start (or restart) one node; with `wait`, until the cluster is ready again."""
        node = self.nodes[node_id - 1]
        if node.proc is not None and node.proc.poll() is None:
            return
        out = open(self.data_dir / "logs" / f"stdout-{node.node_id}.log", "ab")
        node.proc = subprocess.Popen(
            [*_DIE_WITH_PARENT, *node.launcher, java_command(), *_NODE_HEAP, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={node.data_dir / 'log4j2.yaml'}",
             "-cp", f"{libs_dir()}/*", "kafka.Kafka", str(self._config_path(node))],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        out.close()
        (node.data_dir / PID_FILE).write_text(f"{node.proc.pid}\n")
        if wait:
            self.wait_ready(timeout_s)

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Stop one node abruptly (SIGKILL) or cleanly (SIGTERM)."""
        node = self.nodes[node_id - 1]
        proc, node.proc = node.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pid(self, node_id: int) -> int | None:
        proc = self.nodes[node_id - 1].proc
        return proc.pid if proc else None

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every running node is in the cluster's metadata and the offsets and
        transaction coordinators answer (a group join and a transactional init)."""
        from confluent_kafka import KafkaException, Producer
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        running = {n.node_id for n in self.nodes if n.proc is not None}
        last = "no answer"
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise BrokerError(f"Kafka node {node.node_id} exited with code {node.proc.returncode}; "
                                      f"see {node.log_path}")
            try:
                quiet = {"bootstrap.servers": self.bootstrap_servers, "log_level": 2,  # not yet up: no noise
                         **self.admin_config()}
                admin = AdminClient(quiet)
                brokers = set(admin.list_topics(timeout=2).brokers)
                if brokers >= running:
                    producer = Producer({**quiet, "transactional.id": "bank-readiness-probe"})
                    producer.init_transactions(max(1.0, deadline - time.monotonic()))
                    return
                last = f"brokers {sorted(brokers)} of {sorted(running)}"
            except KafkaException as exc:
                last = str(exc)
            time.sleep(0.2)
        raise BrokerError(f"Kafka was not ready in {timeout_s:.0f} s ({last}); see {self.data_dir}/logs")

    def active_controller(self) -> int:
        """The node id of the KRaft quorum's current leader, read from the nodes' logs."""
        best: tuple[int, int] | None = None
        pattern = re.compile(r"\[RaftManager id=(\d+)\] Completed transition to Leader\(.*?\bepoch=(\d+)")
        for node in self.nodes:
            if node.proc is None or not node.log_path.exists():
                continue
            for match in pattern.finditer(node.log_path.read_text(errors="replace")):
                nid, epoch = int(match.group(1)), int(match.group(2))
                if best is None or epoch > best[1]:
                    best = (nid, epoch)
        if best is None:
            raise BrokerError("no active controller found in the nodes' logs")
        return best[0]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every node at once (a clean shutdown of each), SIGKILL what is left after
        the timeout: stopped one by one, the last nodes of a quorum wait for the gone ones."""
        procs = [n.proc for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for node in self.nodes:
            node.proc = None
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _admin_password(data_dir: Path) -> str:
    """The super user's password: made with the cluster's storage, kept beside it (0600)."""
    import secrets

    path = data_dir / "admin.password"
    if not path.exists():
        if any(data_dir.glob("node-*/log/meta.properties")):
            raise BrokerError(f"{data_dir} holds an unsecured cluster's storage: start with "
                              "--clean or choose another --data-dir")
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


@contextmanager
def kafka_cluster(bootstrap_servers: str, data_dir: str, port: int | None = None, nodes: int = 1,
                  clean: bool = False) -> Iterator[str]:
    """Yield bootstrap servers: the given cluster, or a started embedded one."""
    if bootstrap_servers:
        yield bootstrap_servers
        return
    cluster = KafkaCluster(data_dir, nodes, port, clean).start()
    try:
        yield cluster.bootstrap_servers
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m kbank.streams.broker install`: fetch the jars (used by `make`)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print("usage: python -m kbank.streams.broker install", file=sys.stderr)
        return 2
    try:
        print(f"Apache Kafka {KAFKA_VERSION} jars in {install_jars()}")
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
