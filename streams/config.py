"""All configuration in one place: environment variables with defaults.

`bank --help` prints this table, so an operator never has to read code to
find a knob. Fault-injection settings exist only so tests can prove that the
guarantees depend on the mechanisms they claim to depend on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, field


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = field(default="", metadata={
        "env": "KAFKA_BOOTSTRAP_SERVERS",
        "help": "Kafka cluster to use; empty: `bank up` starts the embedded Apache Kafka"})
    topic_prefix: str = field(default="", metadata={
        "env": "BANK_TOPIC_PREFIX",
        "help": "prefix for every topic and group name (isolates runs and generations)"})
    partitions: int = field(default=8, metadata={
        "env": "BANK_PARTITIONS",
        "help": "partition count of the co-partitioned topics when they are created"})
    kafka_credentials: str = field(default="", metadata={
        "env": "BANK_KAFKA_CREDENTIALS",
        "help": "directory of one librdkafka properties file per Kafka principal (admin, engine, "
                "views, intake, tools, client: see SECURITY.md); each process connects as its "
                "role's principal. Empty: the KAFKA_SASL_*/KAFKA_SSL_* variables only"})
    replication_factor: int = field(default=1, metadata={
        "env": "BANK_REPLICATION_FACTOR",
        "help": "replication factor for created topics (3 on a production cluster)"})
    log_level: str = field(default="WARNING", metadata={
        "env": "BANK_LOG_LEVEL", "choices": ("DEBUG", "INFO", "WARNING", "ERROR"),
        "help": "log level of the views workers (INFO shows table recovery and where sources resume)"})
    state_dir: str = field(default=".state", metadata={
        "env": "BANK_STATE_DIR",
        "help": "directory for the RocksDB state stores"})
    batch_max_records: int = field(default=5000, metadata={
        "env": "BANK_BATCH_MAX_RECORDS",
        "help": "most input records in one engine transaction"})
    batch_max_ms: int = field(default=20, metadata={
        "env": "BANK_BATCH_MAX_MS",
        "help": "longest an engine waits to fill a batch before committing it"})
    engine_fetch_min_bytes: int = field(default=50_000, metadata={
        "env": "BANK_ENGINE_FETCH_MIN_BYTES",
        "help": "an engine's fetch waits for this much input (or BANK_ENGINE_FETCH_WAIT_MS): fewer, "
                "fuller fetches cost the broker less (measured: 105 -> 86 us per transfer at 10,000/s)"})
    engine_fetch_wait_ms: int = field(default=20, metadata={
        "env": "BANK_ENGINE_FETCH_WAIT_MS",
        "help": "longest a fetch of an engine waits for BANK_ENGINE_FETCH_MIN_BYTES"})
    session_timeout_ms: int = field(default=6000, metadata={
        "env": "BANK_SESSION_TIMEOUT_MS",
        "help": "consumer group session timeout (a dead worker's partitions move after this)"})
    transaction_timeout_ms: int = field(default=10000, metadata={
        "env": "BANK_TRANSACTION_TIMEOUT_MS",
        "help": "transaction timeout of the engine's transactional producer"})
    max_transfer_amount: int = field(default=0, metadata={
        "env": "BANK_MAX_TRANSFER_AMOUNT",
        "help": "decision rule: reject transfers above this amount (limit_exceeded); 0 = no cap"})
    web_host: str = field(default="127.0.0.1", metadata={
        "env": "BANK_WEB_HOST",
        "help": "host name other views workers use to reach this one (its advertised URL)"})
    web_bind: str = field(default="127.0.0.1", metadata={
        "env": "BANK_WEB_BIND",
        "help": "address the views workers' web servers listen on (0.0.0.0 in containers)"})
    web_allowed_hosts: str = field(default="", metadata={
        "env": "BANK_WEB_ALLOWED_HOSTS",
        "help": "comma-separated host names a request's Host header may name (a DNS-rebinding "
                "page names its own: refused 421); empty: BANK_WEB_HOST, 127.0.0.1, localhost, "
                "[::1]; * allows any"})
    web_max_body_bytes: int = field(default=65536, metadata={
        "env": "BANK_WEB_MAX_BODY_BYTES",
        "help": "largest request body the web endpoint accepts (larger: 413)"})
    web_max_queued_requests: int = field(default=10000, metadata={
        "env": "BANK_WEB_MAX_QUEUED_REQUESTS",
        "help": "requests a views worker may have waiting for the broker (more: 503 + Retry-After)"})
    web_wait_timeout_s: float = field(default=10.0, metadata={
        "env": "BANK_WEB_WAIT_TIMEOUT_S",
        "help": "default and largest timeout of ?wait=completed and ?min_seq reads"})
    api_key: str = field(default="", metadata={
        "env": "BANK_API_KEY", "secret": True,
        "help": "the HTTP API key bank's own tools send (bank replay views; bank up prints one)"})
    web_rate_limit_per_s: float = field(default=2000.0, metadata={
        "env": "BANK_WEB_RATE_LIMIT_PER_S",
        "help": "requests per second one API key may make of one views worker, sustained (more: "
                "429 + Retry-After), so one client cannot starve the rest"})
    web_rate_burst: int = field(default=2000, metadata={
        "env": "BANK_WEB_RATE_BURST",
        "help": "requests one API key may make at once above BANK_WEB_RATE_LIMIT_PER_S"})
    fault_abort_every: int = field(default=0, metadata={
        "env": "BANK_FAULT_ABORT_EVERY",
        "help": "testing: abort every Nth engine transaction after its outputs were produced (0 = never)"})
    fault_unknown_commit_every: int = field(default=0, metadata={
        "env": "BANK_FAULT_UNKNOWN_COMMIT_EVERY",
        "help": "testing: every Nth engine batch commits, then its commit is reported as of unknown "
                "outcome, as after a commit timeout (0 = never)"})
    fault_crash_every: int = field(default=0, metadata={
        "env": "BANK_FAULT_CRASH_EVERY",
        "help": "testing: SIGKILL the worker itself in the middle of writing every Nth batch's "
                "changelog, after its outputs and account states (0 = never)"})
    fault_commit_delay_ms: int = field(default=0, metadata={
        "env": "BANK_FAULT_COMMIT_DELAY_MS",
        "help": "testing: wait this long between producing a batch and committing it "
                "(widens the window in which a crash leaves a produced, uncommitted batch)"})
    fault_freeze_at_batch: int = field(default=0, metadata={
        "env": "BANK_FAULT_FREEZE_AT_BATCH",
        "help": "testing: SIGSTOP the worker itself once, at its Nth batch or the first after it at "
                "BANK_FAULT_FREEZE_POINT (someone else must SIGCONT it; 0 = never)"})
    fault_freeze_point: str = field(default="before-batch", metadata={
        "env": "BANK_FAULT_FREEZE_POINT", "choices": ("before-batch", "before-commit"),
        "help": "testing: where BANK_FAULT_FREEZE_AT_BATCH stops the worker: before-batch (records "
                "fetched, nothing written) or before-commit (outputs produced, not committed)"})
    engine_stall_exit_s: float = field(default=120.0, metadata={
        "env": "BANK_ENGINE_STALL_EXIT_S",
        "help": "an engine worker whose poll loop makes no step for this long prints every "
                "thread's stack to its log and exits, to be restarted (a client call stuck on a "
                "lost broker must not stall its partitions forever; 0 = never)"})
    engine_metrics_port: int = field(default=0, metadata={
        "env": "BANK_ENGINE_METRICS_PORT",
        "help": "first port of the engine workers' Prometheus /metrics (worker i uses port + i; 0 = off)"})
    unsafe_views_keep_state: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_VIEWS_KEEP_STATE",
        "help": "testing: a views worker keeps its local RocksDB files when it starts (writes its "
                "changelog never received then go missing once its partitions move)"})
    unsafe_views_last_write_wins: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_VIEWS_LAST_WRITE_WINS",
        "help": "testing: a views worker recovering its table lets the changelog's last write of a "
                "key win, as plain Faust does (a late, stale write then comes back)"})
    unsafe_web_no_auth: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_WEB_NO_AUTH",
        "help": "testing: the views' HTTP routes ask for no API key (anyone who reaches the port "
                "moves any account's money)"})
    unsafe_no_transactions: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_NO_TRANSACTIONS",
        "help": "testing: no transactions; offsets committed after the outputs, every changelog "
                "record trusted (breaks exactly-once)"})
    unsafe_rerun_unknown_commit: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_RERUN_UNKNOWN_COMMIT",
        "help": "testing: a commit of unknown outcome is taken as aborted and its batch re-run "
                "from memory (applies it twice when it had committed)"})
    unsafe_no_dedupe: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_NO_DEDUPE",
        "help": "testing: disable the request-id idempotency guard (breaks exactly-once)"})
    unsafe_read_uncommitted: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_READ_UNCOMMITTED",
        "help": "testing: the engine reads its inputs read_uncommitted (applies credits of "
                "aborted transactions)"})

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Read and validate every setting from the environment; keyword overrides win.

        Raises SettingsError naming the variable and what it accepts."""
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = os.environ.get(name)
            if raw is None:
                continue
            values[f.name] = _parse(name, f.type, raw, f.metadata.get("choices"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def needs_broker(self, command: str) -> "Settings":
        """These settings, if they name a cluster; else the one-line error of every command
        that talks to Kafka (SettingsError)."""
        if not self.bootstrap_servers:
            raise SettingsError(f"bank {command} needs KAFKA_BOOTSTRAP_SERVERS (bank up starts a "
                                f"broker and prints it; a secured one also BANK_KAFKA_CREDENTIALS)")
        return self

    def topic(self, name: str) -> str:
        """The full name of a topic (or group) under this run's prefix."""
        return f"{self.topic_prefix}{name}"

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _parse(name: str, kind: object, raw: str, choices: tuple[str, ...] | None) -> object:
    text = raw.strip()
    if kind in ("int", int):
        try:
            value = int(text)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < 0:
            raise SettingsError(f"{name} must not be negative, got {value}")
        return value
    if kind in ("float", float):
        try:
            return float(text)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if kind in ("bool", bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SettingsError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")
    if choices and text not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return text


def describe() -> str:
    """A help table of every environment variable and its default."""
    lines = ["environment variables:"]
    for f in fields(Settings):
        lines.append(f"  {f.metadata['env']:<30} {f.metadata['help']} (default: {f.default!r})")
    lines.append("  client security settings: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_* become")
    lines.append("  librdkafka's security.protocol, sasl.*, ssl.* (KAFKA_SSL_CA_LOCATION -> ssl.ca.location);")
    lines.append("  other KAFKA_* variables (KAFKA_HEAP_OPTS, KAFKA_OPTS, ...) are not client settings: ignored")
    return "\n".join(lines)
