"""All configuration in one place: environment variables with defaults, validated.

`bank --help` prints this table, so an operator never has to read code to find a knob.
Settings is a pydantic dataclass: every value is checked against its type and bounds when
it is made, from the environment or by `dataclasses.replace`, and an error names the
variable. Testing-only settings (BANK_FAULT_*, BANK_UNSAFE_*) exist only so tests can prove
that the guarantees depend on the mechanisms they claim to depend on: they are refused
unless BANK_TEST_MODE is on, and `--help` lists them apart.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import field, fields
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.dataclasses import dataclass

PORT = Annotated[int, Field(ge=0, le=65535)]
POSITIVE = Annotated[int, Field(ge=1)]
NON_NEGATIVE = Annotated[int, Field(ge=0)]
MAX_AMOUNT = 2**63 - 1

# BANK_* variables that are not settings of a process, read where they are used
OTHER_VARIABLES = {
    "BANK_KAFKA_LIBS": "where `make install` keeps the broker's jars (read by kbank/streams/broker)",
    "BANK_KAFKA_ADMIN_PASSWORD": "docker-compose.yml: the cluster's super user password",
    "BANK_CONSOLE_SCREENSHOTS": "tests: a directory to save the console's screenshots in",
    "BANK_PEER_VENV": "`bank bench --peer quix`: the peer's own virtualenv (default ./.venv-peer)",
}
# librdkafka client settings taken from the environment: KAFKA_SECURITY_PROTOCOL ->
# security.protocol, KAFKA_SASL_USERNAME -> sasl.username, KAFKA_SSL_CA_LOCATION ->
# ssl.ca.location. Kafka's own scripts' variables (KAFKA_HEAP_OPTS, KAFKA_OPTS, ...) are not.
CLIENT_ENV_PREFIXES = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_", "KAFKA_SSL_",
                       "KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION")


def client_property(env_name: str) -> str:
    return env_name[len("KAFKA_"):].lower().replace("_", ".")


@dataclass(frozen=True, config=ConfigDict(allow_inf_nan=False, extra="forbid"))
class Settings:
    bootstrap_servers: str = field(default="", metadata={
        "env": "KAFKA_BOOTSTRAP_SERVERS",
        "help": "Kafka cluster to use; empty: `bank up` starts the embedded Apache Kafka"})
    topic_prefix: str = field(default="", metadata={
        "env": "BANK_TOPIC_PREFIX",
        "help": "prefix for every topic and group name (isolates runs and generations)"})
    partitions: Annotated[int, Field(ge=1, le=10_000)] = field(default=8, metadata={
        "env": "BANK_PARTITIONS",
        "help": "partition count of the co-partitioned topics when they are created"})
    kafka_credentials: str = field(default="", metadata={
        "env": "BANK_KAFKA_CREDENTIALS",
        "help": "directory of one librdkafka properties file per Kafka principal (admin, engine, "
                "views, intake, tools, client: see SECURITY.md); each process connects as its "
                "role's principal. Empty: the KAFKA_SASL_*/KAFKA_SSL_* variables only"})
    replication_factor: Annotated[int, Field(ge=1, le=16)] = field(default=1, metadata={
        "env": "BANK_REPLICATION_FACTOR",
        "help": "replication factor for created topics (3 on a production cluster)"})
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = field(default="WARNING", metadata={
        "env": "BANK_LOG_LEVEL",
        "help": "log level of the views workers (INFO shows table recovery and where sources resume)"})
    state_dir: str = field(default=".state", metadata={
        "env": "BANK_STATE_DIR",
        "help": "directory for the RocksDB state stores"})
    batch_max_records: Annotated[int, Field(ge=1, le=1_000_000)] = field(default=5000, metadata={
        "env": "BANK_BATCH_MAX_RECORDS",
        "help": "most input records in one engine transaction"})
    batch_max_ms: Annotated[int, Field(ge=1, le=60_000)] = field(default=20, metadata={
        "env": "BANK_BATCH_MAX_MS",
        "help": "longest an engine waits to fill a batch before committing it"})
    engine_fetch_min_bytes: Annotated[int, Field(ge=1, le=100_000_000)] = field(default=50_000, metadata={
        "env": "BANK_ENGINE_FETCH_MIN_BYTES",
        "help": "an engine's fetch waits for this much input (or BANK_ENGINE_FETCH_WAIT_MS): fewer, "
                "fuller fetches cost the broker less (measured: 105 -> 86 us per transfer at 10,000/s)"})
    engine_fetch_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = field(default=20, metadata={
        "env": "BANK_ENGINE_FETCH_WAIT_MS",
        "help": "longest a fetch of an engine waits for BANK_ENGINE_FETCH_MIN_BYTES"})
    engine_fetch_queue_kb: Annotated[int, Field(ge=64, le=2_097_151)] = field(default=65536, metadata={
        "env": "BANK_ENGINE_FETCH_QUEUE_KB",
        "help": "most input an engine fetches ahead of what it has decided (librdkafka's "
                "queued.max.messages.kbytes)"})
    engine_linger_ms: Annotated[int, Field(ge=0, le=10_000)] = field(default=1000, metadata={
        "env": "BANK_ENGINE_LINGER_MS",
        "help": "longest an engine's records wait to fill a produce request while its batch is "
                "decided (the commit sends what is left)"})
    session_timeout_ms: Annotated[int, Field(ge=1_000, le=3_600_000)] = field(default=6000, metadata={
        "env": "BANK_SESSION_TIMEOUT_MS",
        "help": "consumer group session timeout (a dead worker's partitions move after this)"})
    transaction_timeout_ms: Annotated[int, Field(ge=1_000, le=900_000)] = field(default=10000, metadata={
        "env": "BANK_TRANSACTION_TIMEOUT_MS",
        "help": "transaction timeout of the engine's transactional producer"})
    close_settle_margin_ms: Annotated[int, Field(ge=0, le=3_600_000)] = field(default=10000, metadata={
        "env": "BANK_CLOSE_SETTLE_MARGIN_MS",
        "help": "bank close: how long past an instant plus the transaction timeout it waits "
                "before it trusts that every input stamped by then is in its topic (clock "
                "skew between the engine's hosts and the broker's)"})
    max_hold_timeout_s: Annotated[int, Field(ge=1, le=366 * 86_400)] = field(default=30 * 86_400, metadata={
        "env": "BANK_MAX_HOLD_TIMEOUT_S",
        "help": "decision rule: the longest timeout_s a hold may have (a longer one is rejected "
                "invalid); 30 days by default"})
    max_transfer_amount: Annotated[int, Field(ge=0, le=MAX_AMOUNT)] = field(default=0, metadata={
        "env": "BANK_MAX_TRANSFER_AMOUNT",
        "help": "decision rule: reject transfers above this amount (limit_exceeded); 0 = no cap"})
    id_retention_s: Annotated[int, Field(ge=1, le=10 * 366 * 86_400)] = field(default=7 * 86_400, metadata={
        "env": "BANK_ID_RETENTION_S",
        "help": "decision rule: how long the engine remembers an applied request id (and an "
                "external_ref, a settled hold): a retry within it gets the first decision, a "
                "request re-using the id after it is a new request (default 7 days)"})
    rocksdb_memory_mb: Annotated[int, Field(ge=8, le=1_048_576)] = field(default=128, metadata={
        "env": "BANK_ROCKSDB_MEMORY_MB",
        "help": "RocksDB memory of one engine or views worker, all its partition stores "
                "together: one block cache of this size, memtables (at most half) included"})
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
    web_max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 2**20)] = field(default=65536, metadata={
        "env": "BANK_WEB_MAX_BODY_BYTES",
        "help": "largest request body the web endpoint accepts (larger: 413)"})
    web_max_queued_requests: POSITIVE = field(default=10000, metadata={
        "env": "BANK_WEB_MAX_QUEUED_REQUESTS",
        "help": "requests a views worker may have waiting for the broker (more: 503 + Retry-After)"})
    web_wait_timeout_s: Annotated[float, Field(gt=0, le=3600)] = field(default=10.0, metadata={
        "env": "BANK_WEB_WAIT_TIMEOUT_S",
        "help": "default and largest timeout of ?wait=completed and ?min_seq reads"})
    api_key: SecretStr = field(default=SecretStr(""), metadata={
        "env": "BANK_API_KEY",
        "help": "the HTTP API key bank's own tools send (bank replay views; bank up prints one)"})
    web_rate_limit_per_s: Annotated[float, Field(gt=0)] = field(default=2000.0, metadata={
        "env": "BANK_WEB_RATE_LIMIT_PER_S",
        "help": "requests per second one API key may make, sustained, across every views worker "
                "(more: 429 + Retry-After), so one client cannot starve the rest"})
    web_rate_burst: POSITIVE = field(default=2000, metadata={
        "env": "BANK_WEB_RATE_BURST",
        "help": "requests one API key may make at once above BANK_WEB_RATE_LIMIT_PER_S"})
    web_rate_share_s: Annotated[float, Field(ge=0.05, le=10)] = field(default=0.25, metadata={
        "env": "BANK_WEB_RATE_SHARE_S",
        "help": "how often each views worker tells the others what each API key used at it "
                "(views.usage): a key's rate is overshot by at most this long's worth per worker"})
    web_query_budget: Annotated[int, Field(ge=10, le=1_000_000)] = field(default=10_000, metadata={
        "env": "BANK_WEB_QUERY_BUDGET",
        "help": "history entries one query may read: a filtered page past it comes back short "
                "with a cursor, a statement over more events is refused (400)"})
    webhook_allowed_hosts: str = field(default="", metadata={
        "env": "BANK_WEBHOOK_ALLOWED_HOSTS",
        "help": "comma-separated hosts (or host:port) webhooks may call; a URL elsewhere is "
                "refused (no SSRF into the operator's network); empty: no webhooks"})
    webhook_timeout_s: Annotated[float, Field(gt=0, le=300)] = field(default=5.0, metadata={
        "env": "BANK_WEBHOOK_TIMEOUT_S",
        "help": "longest one webhook call may take (connect to last byte) before it counts as failed"})
    webhook_max_attempts: Annotated[int, Field(ge=1, le=100)] = field(default=8, metadata={
        "env": "BANK_WEBHOOK_MAX_ATTEMPTS",
        "help": "attempts of one delivery before it is parked as failed (redrive to try again)"})
    webhook_backoff_ms: Annotated[int, Field(ge=1, le=3_600_000)] = field(default=1000, metadata={
        "env": "BANK_WEBHOOK_BACKOFF_MS",
        "help": "wait after a delivery's first failure; doubled after each next one, with jitter"})
    webhook_backoff_cap_ms: Annotated[int, Field(ge=1, le=86_400_000)] = field(default=600_000, metadata={
        "env": "BANK_WEBHOOK_BACKOFF_CAP_MS",
        "help": "longest wait between two attempts of one delivery"})
    webhook_concurrency: Annotated[int, Field(ge=1, le=1000)] = field(default=8, metadata={
        "env": "BANK_WEBHOOK_CONCURRENCY",
        "help": "calls one webhook worker makes to one receiver at once (a slow receiver "
                "holds only its own)"})
    webhook_redrive_interval_s: Annotated[float, Field(ge=0, le=86_400)] = field(default=10.0, metadata={
        "env": "BANK_WEBHOOK_REDRIVE_INTERVAL_S",
        "help": "POST /webhooks/{id}/redrive at most once this often per webhook and views "
                "worker (429 with Retry-After before)"})
    webhooks_per_key: Annotated[int, Field(ge=1, le=100_000)] = field(default=100, metadata={
        "env": "BANK_WEBHOOKS_PER_KEY",
        "help": "webhooks one API key may have registered at a time (POST /webhooks past it: "
                "409 webhook_limit)"})
    webhook_max_pending: Annotated[int, Field(ge=1, le=10_000_000)] = field(default=100_000, metadata={
        "env": "BANK_WEBHOOK_MAX_PENDING",
        "help": "deliveries one webhook may have waiting in one worker; past it a new event's "
                "delivery is parked as failed at once (redrive it later)"})
    fault_abort_every: NON_NEGATIVE = field(default=0, metadata={
        "env": "BANK_FAULT_ABORT_EVERY", "testing": True,
        "help": "testing: abort every Nth engine transaction after its outputs were produced (0 = never)"})
    fault_unknown_commit_every: NON_NEGATIVE = field(default=0, metadata={
        "env": "BANK_FAULT_UNKNOWN_COMMIT_EVERY", "testing": True,
        "help": "testing: every Nth engine batch commits, then its commit is reported as of unknown "
                "outcome, as after a commit timeout (0 = never)"})
    fault_crash_every: NON_NEGATIVE = field(default=0, metadata={
        "env": "BANK_FAULT_CRASH_EVERY", "testing": True,
        "help": "testing: SIGKILL the worker itself in the middle of writing every Nth batch's "
                "changelog, after its outputs and account states (0 = never)"})
    fault_commit_delay_ms: Annotated[int, Field(ge=0, le=600_000)] = field(default=0, metadata={
        "env": "BANK_FAULT_COMMIT_DELAY_MS", "testing": True,
        "help": "testing: wait this long between producing a batch and committing it "
                "(widens the window in which a crash leaves a produced, uncommitted batch)"})
    fault_freeze_at_batch: NON_NEGATIVE = field(default=0, metadata={
        "env": "BANK_FAULT_FREEZE_AT_BATCH", "testing": True,
        "help": "testing: SIGSTOP the worker itself once, at its Nth batch or the first after it at "
                "BANK_FAULT_FREEZE_POINT (someone else must SIGCONT it; 0 = never)"})
    fault_freeze_point: Literal["before-batch", "before-commit"] = field(default="before-batch", metadata={
        "env": "BANK_FAULT_FREEZE_POINT", "testing": True,
        "help": "testing: where BANK_FAULT_FREEZE_AT_BATCH stops the worker: before-batch (records "
                "fetched, nothing written) or before-commit (outputs produced, not committed)"})
    engine_stall_exit_s: Annotated[float, Field(ge=0, le=86_400)] = field(default=120.0, metadata={
        "env": "BANK_ENGINE_STALL_EXIT_S",
        "help": "an engine worker whose poll loop makes no step for this long prints every "
                "thread's stack to its log and exits, to be restarted (a client call stuck on a "
                "lost broker must not stall its partitions forever; 0 = never)"})
    engine_failure_limit: Annotated[int, Field(ge=1, le=100)] = field(default=3, metadata={
        "env": "BANK_ENGINE_FAILURE_LIMIT",
        "help": "a request the engine fails deciding this many times (a bug: each failure "
                "ends the worker) is refused with engine_error and dead-lettered, so it cannot "
                "halt its partitions; money in flight is never skipped (the worker halts)"})
    fault_bug_on: str = field(default="", metadata={
        "env": "BANK_FAULT_BUG_ON", "testing": True,
        "help": "testing: a planted bug: the engine raises deciding a record of this input "
                "(`requests:TEXT` or `credits:TEXT`) whose value contains TEXT"})
    engine_abort_limit: Annotated[int, Field(ge=1, le=10_000)] = field(default=10, metadata={
        "env": "BANK_ENGINE_ABORT_LIMIT",
        "help": "an engine worker whose batches abort this many times in a row (no commit "
                "between) ends with one line naming the causes, to be restarted with a backoff (an error "
                "no retry fixes, an ACL refused say, ends it at once)"})
    engine_stall_after_s: Annotated[float, Field(gt=0, le=86_400)] = field(default=30.0, metadata={
        "env": "BANK_ENGINE_STALL_AFTER_S",
        "help": "the views' /health says the engine is stalled when a partition has had "
                "records waiting and no transaction committed for it this long"})
    views_stale_after_s: Annotated[float, Field(ge=3, le=86_400)] = field(default=15.0, metadata={
        "env": "BANK_VIEWS_STALE_AFTER_S",
        "help": "a views worker the brokers have not answered this long says its reads may be "
                "stale: every answer carries Bank-Brokers-Unreachable-Seconds and /health is "
                "degraded (it asks them every 3 s; an answer may take 10)"})
    engine_restore_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = field(default=300.0, metadata={
        "env": "BANK_ENGINE_RESTORE_TIMEOUT_S",
        "help": "longest an engine worker may take to restore one partition from its changelog "
                "before it gives up (and is restarted)"})
    engine_metrics_port: PORT = field(default=0, metadata={
        "env": "BANK_ENGINE_METRICS_PORT",
        "help": "first port of the engine workers' Prometheus /metrics (worker i uses port + i; 0 = off)"})
    engine_metrics_bind: str = field(default="127.0.0.1", metadata={
        "env": "BANK_ENGINE_METRICS_BIND",
        "help": "address the engine workers' /metrics listen on (0.0.0.0 for a scraper in "
                "another container)"})
    fault_views_batch_delay_ms: Annotated[int, Field(ge=0, le=60_000)] = field(default=0, metadata={
        "env": "BANK_FAULT_VIEWS_BATCH_DELAY_MS", "testing": True,
        "help": "testing: a views worker pauses this long after each batch it folds (so a kill "
                "lands mid-fold)"})
    fault_reconciler_crash_at: NON_NEGATIVE = field(default=0, metadata={
        "env": "BANK_FAULT_RECONCILER_CRASH_AT", "testing": True,
        "help": "testing: the reconciler SIGKILLs itself in its Nth transaction, once its "
                "results are produced and flushed, before it commits"})
    unsafe_views_resume_at_end: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_VIEWS_RESUME_AT_END", "testing": True,
        "help": "testing: a views worker resumes its sources at their ends instead of at the "
                "positions its store recorded (what it had not folded is lost)"})
    unsafe_views_serve_isolated: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_VIEWS_SERVE_ISOLATED", "testing": True,
        "help": "testing: a views worker answers a read whatever min_seq asks and never says "
                "its answers are stale (serves an old balance after losing the brokers)"})
    unsafe_web_no_auth: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_WEB_NO_AUTH", "testing": True,
        "help": "testing: the views' HTTP routes ask for no API key (anyone who reaches the port "
                "moves any account's money)"})
    unsafe_no_transactions: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_NO_TRANSACTIONS", "testing": True,
        "help": "testing: no transactions; offsets committed after the outputs, every changelog "
                "record trusted (breaks exactly-once)"})
    unsafe_rerun_unknown_commit: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_RERUN_UNKNOWN_COMMIT", "testing": True,
        "help": "testing: a commit of unknown outcome is taken as aborted and its batch re-run "
                "from memory (applies it twice when it had committed)"})
    unsafe_webhooks_commit_first: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_WEBHOOKS_COMMIT_FIRST", "testing": True,
        "help": "testing: the webhook worker keeps new deliveries in memory only, so its ledger "
                "position moves past events nothing durable remembers (a crash loses them)"})
    unsafe_no_dedupe: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_NO_DEDUPE", "testing": True,
        "help": "testing: disable the request-id idempotency guard (breaks exactly-once)"})
    unsafe_retry_refused: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_RETRY_REFUSED", "testing": True,
        "help": "testing: the engine retries a batch the broker refused for good (an ACL, a "
                "missing topic) as if it were a passing error (the old abort loop)"})
    unsafe_read_uncommitted: bool = field(default=False, metadata={
        "env": "BANK_UNSAFE_READ_UNCOMMITTED", "testing": True,
        "help": "testing: the engine reads its inputs read_uncommitted (applies credits of "
                "aborted transactions)"})

    test_mode: bool = field(default=False, metadata={
        "env": "BANK_TEST_MODE",
        "help": "allow the testing-only settings below (the test suite turns it on)"})
    kafka_client: tuple[tuple[str, str], ...] = field(default=(), repr=False, metadata={
        "env": None,
        "help": "librdkafka settings from KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_*"})

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    def __post_init__(self) -> None:
        if self.test_mode:
            return
        on = [f.metadata["env"] for f in fields(self)
              if f.metadata.get("testing") and getattr(self, f.name) != f.default]
        if on:
            raise ValueError(f"testing-only (breaks guarantees on purpose): {', '.join(on)}; "
                             f"set BANK_TEST_MODE=1 to use it")

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Read and validate every setting from the environment; keyword overrides win.

        Raises SettingsError naming the variable and what it accepts; an unknown BANK_*
        variable (a misspelling) is refused by name too."""
        known = {f.metadata["env"]: f for f in fields(cls) if f.metadata["env"]}
        values: dict[str, object] = {}
        for name, raw in os.environ.items():
            if name in known:
                values[known[name].name] = raw.strip()
            elif name.startswith("BANK_") and name not in OTHER_VARIABLES:
                near = difflib.get_close_matches(name, list(known), n=1)
                raise SettingsError(f"{name} is not a setting" +
                                    (f" (did you mean {near[0]}?)" if near else "") +
                                    ": bank --help lists them")
        values["kafka_client"] = tuple(sorted(
            (client_property(k), v) for k, v in os.environ.items()
            if k.startswith(CLIENT_ENV_PREFIXES)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return settings_from(values)

    def needs_broker(self, command: str) -> "Settings":
        """These settings, if they name a cluster; else the one-line error of every command
        that talks to Kafka (SettingsError)."""
        if not self.bootstrap_servers:
            raise SettingsError(f"bank {command} needs KAFKA_BOOTSTRAP_SERVERS (bank up starts a "
                                f"broker and prints it; a secured one also BANK_KAFKA_CREDENTIALS)")
        return self

    @property
    def id_window_ms(self) -> int:
        """The id retention window in milliseconds, the unit of the records' timestamps."""
        return self.id_retention_s * 1000

    def topic(self, name: str) -> str:
        """The full name of a topic (or group) under this run's prefix."""
        return f"{self.topic_prefix}{name}"

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        out = {}
        for f in fields(self):
            name, value = f.metadata["env"], getattr(self, f.name)
            if name is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def settings_from(values: dict[str, object]) -> Settings:
    """Settings from raw values, or a SettingsError that names the variable and the rule."""
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = err["loc"][0] if err["loc"] else None
            env = next((f.metadata["env"] for f in fields(Settings) if f.name == where), None)
            got = f", got {err['input']!r}" if where and "input" in err else ""
            problems.append(f"{env + ': ' if env else ''}{err['msg'].removeprefix('Value error, ')}{got}")
        raise SettingsError("; ".join(problems)) from None


def describe() -> str:
    """A help table of every environment variable and its default, testing-only ones apart."""
    lines = ["environment variables:"]
    rows = [f for f in fields(Settings) if f.metadata["env"]]

    def row(f) -> str:  # noqa: ANN001 - a dataclass field
        default = f.default.get_secret_value() if isinstance(f.default, SecretStr) else f.default
        return f"  {f.metadata['env']:<33} {f.metadata['help']} (default: {default!r})"
    lines += [row(f) for f in rows if not f.metadata.get("testing")]
    lines.append("  client security settings: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_* become")
    lines.append("  librdkafka's security.protocol, sasl.*, ssl.* (KAFKA_SSL_CA_LOCATION -> ssl.ca.location);")
    lines.append("  other KAFKA_* variables (KAFKA_HEAP_OPTS, KAFKA_OPTS, ...) are not client settings: ignored")
    lines.append("testing only (refused unless BANK_TEST_MODE=1; they break guarantees on purpose):")
    lines += [row(f) for f in rows if f.metadata.get("testing")]
    lines.append("other BANK_* variables (not process settings):")
    lines += [f"  {name:<33} {why}" for name, why in OTHER_VARIABLES.items()]
    return "\n".join(lines)
