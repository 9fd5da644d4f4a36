"""The `bank` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

import orjson

from confluent_kafka import KafkaException

from kbank.streams import kafka
from kbank.streams.apikeys import KEY_ROLES
from kbank.streams.config import Settings, SettingsError, describe


def _settings(args: argparse.Namespace) -> Settings:
    """The one Settings of this command, read and validated by main()."""
    return args.settings


def _until_halted(run: Callable[[], None]) -> int:
    """Run a worker; an error no retry fixes (WorkerHalted) ends it with one line and
    HALTED_EXIT_CODE, and the supervisor restarts it with a backoff."""
    from kbank.streams.engine import WorkerHalted
    from kbank.streams.health import HALTED_EXIT_CODE

    try:
        run()
    except WorkerHalted as halted:
        print(halted, file=sys.stderr, flush=True)
        return HALTED_EXIT_CODE
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from kbank.streams.engine import EngineWorker

    settings = _settings(args).needs_broker("worker")
    return _until_halted(EngineWorker(settings, args.worker_id, args.metrics_port).run)


def cmd_views(args: argparse.Namespace) -> int:
    from kbank.streams.views.app import ViewsWorker

    settings = _settings(args).needs_broker("views")
    ViewsWorker(settings, args.worker_id, args.web_port).run()
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from kbank.streams.webhooks.worker import WebhookWorker

    settings = _settings(args).needs_broker("webhooks")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    WebhookWorker(settings, args.worker_id).run()
    return 0


def cmd_break_webhooks(args: argparse.Namespace) -> int:
    from kbank.streams.webhooks.worker import BREAKS, WebhookWorker

    settings = _settings(args).needs_broker("break-webhooks")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    WebhookWorker(settings, args.worker_id, BREAKS).run()
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from kbank.streams.gateway.worker import GatewayWorker

    settings = _settings(args).needs_broker("gateway")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    return _until_halted(GatewayWorker(settings, args.worker_id).run)


def cmd_reconciler(args: argparse.Namespace) -> int:
    from kbank.books.reconcile import Reconciler

    settings = _settings(args).needs_broker("reconciler")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    Reconciler(settings).run()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from kbank.streams.supervisor import up

    demo = None
    if args.demo:
        from kbank.streams.demo import run_demo

        demo = lambda settings, url, api_key: run_demo(settings, url, api_key=api_key)  # noqa: E731
    return up(_settings(args), args.workers, args.broker_port, demo, args.views, args.web_port,
              args.brokers, args.data_dir, args.clean, args.once, args.webhook_workers)


def cmd_topics(args: argparse.Namespace) -> int:
    from kbank.streams.topics import TopicLayoutError, ensure_topics

    settings = _settings(args).needs_broker("topics")
    try:
        counts = ensure_topics(settings)
    except TopicLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, n in counts.items():
        print(f"{name}\t{n} partitions")
    if settings.kafka_credentials:
        from kbank.streams.kafka import ADMIN, client_config
        from kbank.streams.principals import provision

        paths = provision(settings, client_config(settings, ADMIN), settings.kafka_credentials)
        print(f"principals and ACLs made as the admin; credentials: "
              f"{', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_kafka_config(args: argparse.Namespace) -> int:
    """librdkafka properties of one principal, for a user's own producer or consumer; with
    `client NAME`, a payments service's own principal, made on first use (as the admin)."""
    from kbank.streams.kafka import client_config

    settings = _settings(args)
    if not settings.kafka_credentials:
        print("bank kafka-config needs BANK_KAFKA_CREDENTIALS (bank up prints it)", file=sys.stderr)
        return 2
    role = args.role
    if role in ("client", "clients"):
        return _kafka_client(settings, args)
    if args.name or args.accounts or args.account_prefix or args.revoke:
        print(f"a name, --accounts, --account-prefix and --revoke are for `client`, not {role}",
              file=sys.stderr)
        return 2
    for key, value in client_config(settings, role).items():
        print(f"{key}={value}")
    return 0


def _kafka_client(settings: Settings, args: argparse.Namespace) -> int:
    from kbank.streams.apikeys import InvalidKey
    from kbank.streams.gateway.admin import (ClientNotFound, create_client, list_clients,
                                             revoke_client)
    from kbank.streams.gateway.grants import outcomes_topic, requests_topic, role_of
    from kbank.streams.kafka import client_config

    if args.role == "clients":
        for grant in list_clients(settings):
            print(orjson.dumps(grant.public()).decode())
        return 0
    if not args.name:
        print("bank kafka-config client NAME [--accounts a,b] [--account-prefix p] [--revoke]",
              file=sys.stderr)
        return 2
    try:
        if args.revoke:
            revoked = revoke_client(settings, args.name)
            print(f"Kafka client {revoked.name} revoked: its principal and ACLs are gone, the "
                  f"gateway refuses anything it still finds", file=sys.stderr)
            return 0
        accounts = tuple(a for a in args.accounts.split(",") if a)
        if accounts or args.account_prefix:
            grant, path = create_client(settings, args.name, accounts, args.account_prefix)
            print(f"Kafka client {grant.name}: may move money out of "
                  f"{', '.join(grant.accounts) or '-'} and accounts starting "
                  f"{grant.account_prefix or '-'}; credentials in {path}", file=sys.stderr)
    except (InvalidKey, ClientNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        conf = client_config(settings, role_of(args.name))
    except SettingsError:
        print(f"no Kafka client {args.name!r} here: make it with --accounts or --account-prefix",
              file=sys.stderr)
        return 1
    print(f"# write requests to {settings.topic(requests_topic(args.name))}, read their outcomes "
          f"from {settings.topic(outcomes_topic(args.name))}")
    for key, value in conf.items():
        print(f"{key}={value}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from kbank.streams.client import RequestSender

    settings = _settings(args).needs_broker("send")
    source = open(args.file, "rb") if args.file != "-" else sys.stdin.buffer
    sender = RequestSender(settings)
    failures = 0

    def ack(line_no: int):
        def on_ack(err, msg):  # noqa: ANN001
            nonlocal failures
            if err:
                failures += 1
                print(orjson.dumps({"line": line_no, "error": err}).decode(), flush=True)
            else:
                print(orjson.dumps({"line": line_no, "request_id": rid_of.get(line_no),
                                    "partition": msg.partition(), "offset": msg.offset()}).decode(),
                      flush=True)
        return on_ack

    rid_of: dict[int, object] = {}
    for line_no, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            request = orjson.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
            rid_of[line_no] = request.get("request_id")
            sender.send(request, ack(line_no))
        except ValueError as exc:
            failures += 1
            print(orjson.dumps({"line": line_no, "error": str(exc)}).decode(), flush=True)
    sender.flush()
    return 1 if failures else 0


def parse_expiry(text: str, now_ms: int) -> int:
    """`30d`, `12h`, `45m` from now, or an ISO 8601 time (UTC unless it says), in ms."""
    import datetime
    import re

    found = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if found:
        unit = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}[found.group(2)]
        return now_ms + int(found.group(1)) * unit
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--expires takes 30d, 12h, 45m or an ISO time, "
                                         f"not {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


def cmd_keys(args: argparse.Namespace) -> int:
    """Make, list and revoke HTTP API keys (written as the Kafka admin: SECURITY.md)."""
    import time

    from kbank.streams import keystore
    from kbank.streams.apikeys import InvalidKey

    settings = _settings(args).needs_broker("keys")
    if args.keys_command == "create":
        accounts = tuple(a for a in (args.accounts or "").split(",") if a)
        try:
            expires = parse_expiry(args.expires, int(time.time() * 1000)) if args.expires else None
            made = keystore.create_key(settings, args.role, accounts, args.account_prefix,
                                       expires, args.label)
        except (InvalidKey, argparse.ArgumentTypeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(orjson.dumps(made.record.public()).decode())
        print(f"API key (shown once; send it as Authorization: Bearer <key>):\n{made.token}")
        return 0
    if args.keys_command == "list":
        for key in keystore.list_keys(settings):
            print(orjson.dumps(key.public()).decode())
        return 0
    try:
        revoked = keystore.revoke_key(settings, args.key_id)
    except keystore.KeyNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(revoked.public()).decode())
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    """bank balance / status / history: the HTTP API through kbank.client, one JSON line
    each, with BANK_API_KEY."""
    from kbank.client import Bank, BankError

    key = args.settings.api_key.get_secret_value()
    if not key:
        print("error: set BANK_API_KEY to an API key (bank up prints the operator's; "
              "bank keys create makes others)", file=sys.stderr)
        return 2
    bank = Bank(args.url, key, retries=2)
    try:
        if args.command == "balance":
            rows = [bank.balance(args.account)]
        elif args.command == "status":
            rows = [bank.status(args.account, args.request_id).raw]
        else:
            rows = (event for _, event in zip(range(args.limit), bank.history(args.account)))
        for row in rows:
            print(orjson.dumps(row).decode())
    except BankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from kbank.replay.__main__ import main as replay_main

    return replay_main(args.replay_args)


def cmd_bench(args: argparse.Namespace) -> int:
    from kbank.bench.__main__ import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bank", description="Exactly-once bank transfers on Kafka.",
        epilog=describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_process_commands, _access_commands, _read_commands, _tool_commands):
        add(sub)
    return parser


def _process_commands(sub: argparse._SubParsersAction) -> None:
    """`bank up` and the processes it runs, each of which runs alone too."""
    p = sub.add_parser("up", help="start the broker (unless KAFKA_BOOTSTRAP_SERVERS), topics and workers")
    p.add_argument("--workers", type=int, default=2, help="engine worker processes (default 2)")
    p.add_argument("--broker-port", type=int, default=None,
                   help="port of the embedded broker (node i of a cluster: port + i); default: free ports")
    p.add_argument("--brokers", type=int, default=1, choices=(1, 3),
                   help="embedded Apache Kafka KRaft nodes: 1, or 3 (replication 3, min.insync.replicas 2)")
    p.add_argument("--data-dir", default=None,
                   help="embedded broker data, logs and the engine's stores (default $BANK_STATE_DIR/kafka); "
                        "kept across restarts")
    p.add_argument("--clean", action="store_true", help="delete --data-dir first: start from empty topics")
    p.add_argument("--once", action="store_true",
                   help="with --demo: stop everything after the demo (exit 1 if its checks failed)")
    p.add_argument("--demo", action="store_true", help="run a small demo workload and print results")
    p.add_argument("--views", type=int, default=2, help="views workers, each with a web server (default 2)")
    p.add_argument("--web-port", type=int, default=8080,
                   help="web port of the first views worker; the next ones use the following ports")
    p.add_argument("--webhook-workers", type=int, default=1,
                   help="webhook delivery workers (default 1; 0: no webhooks delivered)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("worker", help="run one engine worker in the consumer group")
    p.add_argument("--worker-id", default="0", help="stable id: names its transactional id and store")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("views", help="run one views worker: tables from the ledger, and the HTTP endpoint")
    p.add_argument("--worker-id", default="0", help="stable id: names its store directory")
    p.add_argument("--web-port", type=int, default=8080, help="HTTP port (default 8080)")
    p.set_defaults(func=cmd_views)

    p = sub.add_parser("webhooks", help="run one webhook worker: delivers ledger events to "
                                        "registered URLs (POST /webhooks)")
    p.add_argument("--worker-id", default="0", help="names it in logs")
    p.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("break-webhooks", help="run one break webhook worker: delivers the "
                                              "reconciliation's breaks to webhooks registered "
                                              "for reconciliation_break")
    p.add_argument("--worker-id", default="0", help="names it in logs")
    p.set_defaults(func=cmd_break_webhooks)

    p = sub.add_parser("gateway", help="run the Kafka gateway: relays each Kafka client's "
                                       "requests within its grant (bank kafka-config client)")
    p.add_argument("--worker-id", default="0", help="names it in logs and its transactions")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("reconciler", help="run the reconciler: each account's statement lines "
                                          "against its ledger events (bank reconcile)")
    p.add_argument("--worker-id", default="0", help="names it in logs (one runs at a time)")
    p.set_defaults(func=cmd_reconciler)


def _access_commands(sub: argparse._SubParsersAction) -> None:
    """Sending requests, the topics, and who may do what: Kafka principals and API keys."""
    p = sub.add_parser("send", help="produce JSON-lines requests as the operator principal; one "
                                    "acknowledgement line each")
    p.add_argument("file", nargs="?", default="-", help="file of JSON lines (default: stdin)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("topics", help="create the topics of topics.yaml (idempotent) and list them; "
                                      "with BANK_KAFKA_CREDENTIALS holding admin.properties, also "
                                      "the principals and their ACLs (SECURITY.md)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("kafka-config", help="print the librdkafka properties of one Kafka "
                                            "principal; `client NAME --accounts a,b` makes a "
                                            "payments service's own (SECURITY.md)")
    p.add_argument("role", choices=(kafka.ADMIN, *kafka.ROLES, "client", "clients"),
                   help="whose properties (a payments service of your own: client NAME; "
                        "clients lists them)")
    p.add_argument("name", nargs="?", default=None, help="client: the service's name")
    p.add_argument("--accounts", default="", help="client: accounts it may move money out of")
    p.add_argument("--account-prefix", default=None, help="client: every account starting so")
    p.add_argument("--revoke", action="store_true", help="client: revoke it")
    p.set_defaults(func=cmd_kafka_config)

    p = sub.add_parser("keys", help="HTTP API keys: create (printed once), list, revoke")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="make a key and print it once")
    k.add_argument("--role", required=True, choices=KEY_ROLES,
                   help="operator: everything; client: its accounts only, no deposits or "
                        "withdrawals; auditor: read everything, write nothing")
    k.add_argument("--accounts", default="", help="client keys: comma-separated accounts it covers")
    k.add_argument("--account-prefix", default=None,
                   help="client keys: every account whose id starts with this")
    k.add_argument("--expires", default=None, help="30d, 12h, 45m, or an ISO 8601 time (UTC)")
    k.add_argument("--label", default="", help="what the key is for (shown by list)")
    keys.add_parser("list", help="every key (never a secret), one JSON line each")
    k = keys.add_parser("revoke", help="revoke a key: every views worker refuses it within seconds")
    k.add_argument("key_id", help="the key's id (bank keys list)")
    p.set_defaults(func=cmd_keys)


def _read_commands(sub: argparse._SubParsersAction) -> None:
    """Reads over HTTP, as an API key."""
    for name, what in (("balance", "an account's balance, limits, currency, state and metadata"),
                       ("status", "a request's status (its account: the sender, or the account "
                                  "it names)"),
                       ("history", "an account's ledger events, newest first")):
        p = sub.add_parser(name, help=f"{what}, over HTTP (BANK_API_KEY)")
        p.add_argument("account")
        if name == "status":
            p.add_argument("request_id")
        if name == "history":
            p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
        p.add_argument("--url", default="http://127.0.0.1:8080", help="a views worker's URL")
        p.set_defaults(func=cmd_read)


def _tool_commands(sub: argparse._SubParsersAction) -> None:
    """The tools with parsers of their own: replay, bench, chaos, close, reconcile."""
    p = sub.add_parser("replay", help="rebuild and verify from the logs (see bank replay --help)",
                       add_help=False)
    p.add_argument("replay_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("bench", help="benchmark the engine end to end (see bank bench --help)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("chaos", help="load + fault schedule, then verify (see bank chaos --help)",
                       add_help=False)
    p.add_argument("chaos_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_chaos)

    p = sub.add_parser("reconcile", help="import statements, set matching rules, report (see "
                       "bank reconcile --help)", add_help=False)
    p.add_argument("reconcile_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("close", help="close the books at an instant, list and show closes (see "
                       "bank close --help)", add_help=False)
    p.add_argument("close_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_close)


def cmd_chaos(args: argparse.Namespace) -> int:
    from kbank.chaos.run import main as chaos_main

    return chaos_main(args.chaos_args)


def cmd_close(args: argparse.Namespace) -> int:
    from kbank.books.__main__ import main as close_main

    return close_main(args.close_args)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from kbank.books.reconcile_cli import main as reconcile_main

    return reconcile_main(args.reconcile_args)


_DELEGATED = {"bench": cmd_bench, "replay": cmd_replay, "chaos": cmd_chaos, "close": cmd_close,
              "reconcile": cmd_reconcile}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    from kbank.streams.broker import BrokerError
    from kbank.streams.kafka import check_client_env

    try:
        if argv and argv[0] in _DELEGATED:
            # these parse their own options (argparse.REMAINDER would not take leading ones)
            key = f"{argv[0]}_args"
            return _DELEGATED[argv[0]](argparse.Namespace(**{key: argv[1:]}))
        args = build_parser().parse_args(argv)
        args.settings = Settings.from_env()
        check_client_env(args.settings)
        return args.func(args)
    except (SettingsError, BrokerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KafkaException as exc:    # the cluster is down or refuses us: say so, no traceback
        print(f"error: Kafka did not answer as expected ({exc.args[0]}): is the cluster at "
              f"KAFKA_BOOTSTRAP_SERVERS up, and are BANK_KAFKA_CREDENTIALS right?", file=sys.stderr)
        return 1
    except OSError as exc:           # a file named on the command line, a port
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
