"""`bank bench` / `python -m kbank.bench`."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import sys
from dataclasses import replace
from typing import Callable

import orjson

from kbank.streams.broker import KAFKA_VERSION, KafkaCluster, kafka_cluster
from kbank.streams.config import Settings, describe
from kbank.streams.principals import with_admin


def auth_cost(results: list) -> str:  # noqa: ANN001 - BenchResults, off runs first
    """What authentication costs: throughput and CPU per transfer, on against off."""
    half = len(results) // 2
    lines = ["authentication (on vs off, same run):"]
    for off, on in zip(results[:half], results[half:]):
        change = (on.transfers_per_s / off.transfers_per_s - 1) * 100 if off.transfers_per_s else 0
        lines.append(f"  {off.workers} worker(s): {on.transfers_per_s:,.0f} vs "
                     f"{off.transfers_per_s:,.0f} transfers/s ({change:+.1f}%)")
        for kind in on.cpu_us_per_transfer:
            a, b = on.cpu_us_per_transfer[kind], off.cpu_us_per_transfer.get(kind, 0.0)
            lines.append(f"    {kind:<15} {a:6.1f} vs {b:6.1f} us CPU per transfer "
                         f"({(a / b - 1) * 100 if b else 0:+.1f}%)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bank bench", description=__doc__, epilog=describe(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_options(parser)
    _other_measures(parser)
    _books_options(parser)
    _peer_options(parser)
    return parser


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The live run's shape: workers, views, load, accounts, broker."""
    parser.add_argument("--accounts", type=int, default=None,
                        help="accounts the transfers move among (default 100,000; 10,000 with "
                             "--peer)")
    parser.add_argument("--workers", type=int, default=2, help="engine worker processes")
    parser.add_argument("--scaling", default="", help="comma-separated worker counts, e.g. 1,2: "
                        "one run each and a throughput-vs-workers plot")
    parser.add_argument("--views", type=int, default=0, help="views workers folding the ledger "
                        "during the run (their CPU is measured too; 0: the engine alone)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30, help="measured window")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--rate", type=float, default=None, help="open loop at this many transfers/s "
                        "(default: closed loop at maximum)")
    parser.add_argument("--inflight", type=int, default=20_000, help="closed loop: most unfinished")
    parser.add_argument("--zipf", type=float, default=None, help="skew accounts with this Zipf exponent")
    parser.add_argument("--misrouted", type=float, default=0.0, metavar="SHARE",
                        help="send this share (0-1) of the transfers on a partition their key does "
                             "not map to (as another partitioner would): the engine forwards them")


def _other_measures(parser: argparse.ArgumentParser) -> None:
    """What to measure instead of (or besides) the live run, and where the output goes."""
    parser.add_argument("--raw-messages", type=int, default=300_000)
    parser.add_argument("--out", default="bench-out", help="directory for the PNG plots")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run")
    parser.add_argument("--replay-events", type=int, default=0,
                        help="instead: time `replay views` and `replay verify` over this many "
                             "synthetic ledger events (among --accounts accounts)")
    parser.add_argument("--auth", choices=("on", "off", "both"), default="on",
                        help="the embedded broker secured as `bank up` runs it (SASL/SCRAM, ACLs, "
                             "one principal per role), or not, or both one after the other, to "
                             "show what authentication costs (default on)")
    parser.add_argument("--hot-path", type=int, default=0, metavar="N",
                        help="instead: the engine's CPU per transfer without Kafka, over N "
                             "transfers through its processor and a real store (kbank/bench/hotpath.py)")
    parser.add_argument("--views-hot-path", type=int, default=0, metavar="N",
                        help="instead: the views' CPU per transfer without Kafka, over N "
                             "transfers' ledger events and outcomes through their fold and real "
                             "stores (kbank/bench/views_hotpath.py)")
    parser.add_argument("--restore-ids", type=int, default=0,
                        help="instead: time a new engine worker's restore of one partition whose "
                             "changelog holds --accounts accounts and this many applied request ids")
    parser.add_argument("--backlog", type=int, default=0, metavar="N",
                        help="instead: N transfers produced while no engine runs, then the workers "
                             "started (--workers or --scaling, --views); the drain rate from the "
                             "first transfer decided (its debit's outcome) to the last completed "
                             "(their LogAppendTime); with --views, "
                             "also how long the views took to fold everything, and all of "
                             "their CPU")
    parser.add_argument("--recompute", action="store_true",
                        help="with --backlog: then time `bank replay recompute`'s re-decision of "
                             "the drained log in one process and in one per core")
    parser.add_argument("--store-keys", type=int, default=0, metavar="N",
                        help="instead: CPU per miss-and-put as an engine store grows to N keys, "
                             "with its options and with RocksDB's defaults (kbank/bench/store.py)")
    parser.add_argument("--retention-days", type=int, default=0, metavar="D",
                        help="instead: D simulated days of one engine partition's history, with "
                             "the id window (BANK_ID_RETENTION_S) and with ids kept for good: "
                             "what a restore reads and takes, and the store's size, per day; "
                             "plot retention.png in --out (kbank/bench/retention.py)")
    parser.add_argument("--transfers-per-day", type=int, default=100_000, metavar="N",
                        help="with --retention-days: transfers in each simulated day")
    parser.add_argument("--statement-events", type=int, default=0, metavar="N",
                        help="instead: p50/p99 of a statement over an account's N events, and of "
                             "a filtered page, on a real store (kbank/bench/queries.py)")
    parser.add_argument("--views-failover", type=int, default=0, metavar="N",
                        help="instead: over a synthetic ledger of N events, how long one views "
                             "worker takes to serve every partition caught up: from nothing, "
                             "restarted on its own store, and a second worker without a store "
                             "taking over (kbank/bench/failover.py)")
    parser.add_argument("--webhook-events", type=int, default=0, metavar="N",
                        help="instead: deliveries/s of one webhook worker to a local receiver, "
                             "over N ledger events (kbank/bench/webhooks.py)")
    parser.add_argument("--machine-minutes", type=int, default=0, metavar="M",
                        help="instead: the machine's own speed for M minutes with nothing else "
                             "running: the CPU ms of the reference work that every run samples "
                             "once a second (kbank/bench/procs.py), per minute")


def _books_options(parser: argparse.ArgumentParser) -> None:
    """Closing the books and reconciling (kbank/bench/books.py)."""
    parser.add_argument("--close-events", type=int, default=0, metavar="N",
                        help="instead: time a close of the books (bank close) over N synthetic "
                             "ledger events among --accounts accounts, and its memory")
    parser.add_argument("--recon-lines", type=int, default=0, metavar="N",
                        help="instead: a statement of N lines parsed and reconciled against N "
                             "ledger events (no Kafka): lines per second")


def _peer_options(parser: argparse.ArgumentParser) -> None:
    """The engine against what a Python user would build instead (kbank/bench/peer.py)."""
    parser.add_argument("--peer", choices=("quix",), default=None,
                        help="instead: the engine against the pipeline a Python user would "
                             "write with Quix Streams (exactly-once), draining the same backlog "
                             "(--backlog, default 150,000) on the same broker, interleaved, for "
                             "each worker count (--scaling, default 1,2), --rounds times; the "
                             "medians, their ratio, CPU per transfer, and peer.png in --out "
                             "(kbank/bench/peer.py; the peer gets a virtualenv of its own, "
                             ".venv-peer or BANK_PEER_VENV, installed on first use)")
    parser.add_argument("--rounds", type=int, default=3, help="with --peer: rounds of each run")


def _print_result(args: argparse.Namespace, result: dict, line: str) -> None:
    print(orjson.dumps(result).decode() if args.json else line, flush=True)


def single_measure(args: argparse.Namespace) -> int | None:
    """Run the one measurement an "instead" option asks for (its exit code), or None."""
    if args.machine_minutes:
        from kbank.bench.procs import machine_speed

        for minute in machine_speed(args.machine_minutes):
            _print_result(args, minute, f"minute {minute['minute']}: reference work median "
                          f"{minute['median_ms']} ms (min {minute['min_ms']}, max "
                          f"{minute['max_ms']})")
        return 0
    if args.statement_events:
        from kbank.bench.queries import statement_cost

        result = statement_cost(args.statement_events)
        _print_result(args, result,
                      f"statement over {result['events']:,} events: p50 "
                      f"{result['statement_p50_ms']} ms, p99 {result['statement_p99_ms']} ms; a "
                      f"filtered page of 50: p50 {result['filtered_page_p50_ms']} ms, p99 "
                      f"{result['filtered_page_p99_ms']} ms; the 10 largest balances of "
                      f"{result['ranking_accounts']:,} accounts: p50 {result['top10_p50_ms']} ms, "
                      f"p99 {result['top10_p99_ms']} ms (100: p99 {result['top100_p99_ms']} ms)")
        return 0
    if args.store_keys:
        from kbank.bench.store import store_growth

        result = store_growth(args.store_keys)
        _print_result(args, result,
                      f"a miss and a put, us of CPU, per million keys "
                      f"{result['per_million_keys']}: engine options "
                      f"{result['engine_options_us']}, RocksDB defaults "
                      f"{result['rocksdb_defaults_us']}")
        return 0
    if args.hot_path:
        from kbank.bench.hotpath import hot_path_speed

        result = hot_path_speed(args.hot_path)
        _print_result(args, result,
                      f"engine hot path: {result['cpu_us_per_transfer']} us of CPU per transfer "
                      f"({result['transfers']:,} transfers, {result['records_written']:,} records)")
        return 0
    if args.views_hot_path:
        from kbank.bench.views_hotpath import views_hot_path_speed

        result = views_hot_path_speed(args.views_hot_path)
        _print_result(args, result,
                      f"views hot path: {result['cpu_us_per_transfer']} us of CPU per transfer "
                      f"({result['transfers']:,} transfers, {result['records']:,} records, "
                      f"{result['cpu_us_per_record']} us a record)")
        return 0
    for option, run in (("retention_days", retention_main), ("replay_events", replay_main),
                        ("restore_ids", restore_main), ("views_failover", failover_main),
                        ("close_events", close_main), ("recon_lines", recon_main)):
        if getattr(args, option):
            return run(args)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.misrouted <= 1.0:
        parser.error("--misrouted takes a share from 0 to 1")
    if args.accounts is None:
        args.accounts = 10_000 if args.peer else 100_000
    if args.peer and not args.backlog:
        args.backlog = 150_000
    if args.peer and args.rounds < 1:
        parser.error("--rounds takes 1 or more")
    done = single_measure(args)
    if done is not None:
        return done
    base = Settings.from_env(partitions=args.partitions)
    embedded = not base.bootstrap_servers
    if not embedded and args.auth == "both":
        parser.error("--auth both starts the embedded broker twice: unset KAFKA_BOOTSTRAP_SERVERS")
    results = []
    for auth in ("off", "on") if args.auth == "both" else (args.auth,):
        results += live_runs(args, base, auth)
    if args.backlog or args.webhook_events or args.peer:
        return 0
    report_runs(args, results)
    return 0


def live_runs(args: argparse.Namespace, base: Settings, auth: str) -> list:
    """One broker (embedded, secured if `auth` is on, or the configured one), its raw
    throughput, then each run asked for on it; the closed- or open-loop runs' results."""
    from kbank.bench.driver import run_bench
    from kbank.bench.raw import broker_raw_throughput

    log, embedded, results = sys.stderr, not base.bootstrap_servers, []
    state_dir = tempfile.mkdtemp(prefix="bank-bench-state-")
    secured = embedded and auth == "on"
    cluster = KafkaCluster(os.path.join(state_dir, "kafka"), secured=secured).start() \
        if embedded else None
    try:
        bootstrap = cluster.bootstrap_servers if cluster else base.bootstrap_servers
        broker_pids = [n.proc.pid for n in cluster.nodes if n.proc] if cluster else []
        settings = replace(base, bootstrap_servers=bootstrap, state_dir=state_dir)
        if secured:   # the admin only: each run makes its own principals (run_bench)
            settings = with_admin(settings, cluster.admin_config(),
                                  os.path.join(state_dir, "credentials"))
        print(f"broker: {'embedded Apache Kafka ' + KAFKA_VERSION if embedded else bootstrap}"
              f"{', secured (SASL/SCRAM, ACLs)' if secured else ''}; measuring raw throughput",
              file=log, flush=True)
        raw = broker_raw_throughput(replace(settings, topic_prefix=f"bench-raw-{os.getpid()}-"),
                                    args.raw_messages)
        print(f"  raw: produce {raw['produce_msgs_per_s']:,.0f} msgs/s, consume "
              f"{raw['consume_msgs_per_s']:,.0f} msgs/s", file=log, flush=True)
        if args.peer:
            _peer_runs(args, settings, auth, broker_pids)
            return results
        for workers in [int(x) for x in args.scaling.split(",")] if args.scaling \
                else [args.workers]:
            print(f"run: {workers} worker(s), {args.partitions} partitions, "
                  f"{args.accounts:,} accounts, authentication {auth}", file=log, flush=True)
            if args.webhook_events:
                _webhook_run(args, settings, auth)
            elif args.backlog:
                _backlog_run(args, settings, auth, workers, broker_pids, raw)
            else:
                result = run_bench(settings, workers=workers, accounts=args.accounts,
                                   seconds=args.seconds, warmup=args.warmup, rate=args.rate,
                                   inflight=args.inflight, zipf=args.zipf, views=args.views,
                                   raw_msgs_per_s=raw["msgs_per_s"], broker_pids=broker_pids,
                                   misrouted=args.misrouted)
                result.auth = auth if embedded else "as configured"
                results.append(result)
    finally:
        if cluster:
            cluster.stop()
    shutil.rmtree(state_dir, ignore_errors=True)
    return results


def _webhook_run(args: argparse.Namespace, settings: Settings, auth: str) -> None:
    from kbank.bench.webhooks import delivery_speed

    delivered = delivery_speed(settings, args.webhook_events)
    delivered.update(auth=auth)
    _print_result(args, delivered,
                  f"{delivered['events']:,} events delivered to a local receiver: "
                  f"{delivered['deliveries_per_s']:,.0f} deliveries/s, "
                  f"{delivered['worker_cpu_us_per_delivery']} us of the webhook "
                  f"worker's CPU each")


def _backlog_run(args: argparse.Namespace, settings: Settings, auth: str, workers: int,
                 broker_pids: list[int], raw: dict) -> None:
    from kbank.bench.backlog import drain_speed

    drained = drain_speed(settings, workers=workers, views=args.views, accounts=args.accounts,
                          backlog=args.backlog, broker_pids=broker_pids,
                          recompute=args.recompute)
    drained.update(auth=auth, broker_raw_msgs_per_s=raw["msgs_per_s"])
    _print_result(args, drained,
                  f"backlog of {args.backlog:,} drained by {workers} worker(s)"
                  f"{f' with {args.views} views' if args.views else ''}: "
                  f"{drained['drain_transfers_per_s']:,.0f} transfers/s; CPU us per "
                  f"transfer {drained['cpu_us_per_transfer']}")


def _peer_runs(args: argparse.Namespace, settings: Settings, auth: str,
               broker_pids: list[int]) -> None:
    from kbank.bench.peer import compare, plot_comparison, summary, summary_table

    worker_counts = [int(x) for x in args.scaling.split(",")] if args.scaling else [1, 2]
    runs = []
    for run in compare(settings, rounds=args.rounds, worker_counts=worker_counts,
                       accounts=args.accounts, backlog=args.backlog, broker_pids=broker_pids):
        run.update(auth=auth)
        runs.append(run)
        checked = f"; {run['completed']:,} completed, {run['refused']} refused, " \
                  f"{run['applied_twice']} applied twice" if "completed" in run else ""
        _print_result(args, run, f"  {run['side']}, {run['workers']} worker(s), round "
                      f"{run['round']}: {run['drain_transfers_per_s']:,.0f} transfers/s; CPU us "
                      f"per transfer {run['cpu_us_per_transfer']}{checked}")
    rows = summary(runs)
    _print_result(args, {"mode": "peer summary", "rows": rows}, summary_table(rows))
    try:
        print(f"plot: {plot_comparison(runs, os.path.join(args.out, 'peer.png'))}",
              file=sys.stderr)
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install -e '.[bench]')",
              file=sys.stderr)


def report_runs(args: argparse.Namespace, results: list) -> None:
    """The runs' table (or JSON lines), authentication's cost if asked, and the plots."""
    from kbank.bench.report import plot, table

    log = sys.stderr
    if args.json:
        for r in results:
            print(orjson.dumps(r.summary()).decode())
    else:
        print(table(results, os.cpu_count() or 1))
    if args.auth == "both":
        print(auth_cost(results), file=sys.stdout if not args.json else log)
    try:
        for path in plot(results, args.out):
            print(f"plot: {path}", file=log)
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')", file=log)


def on_its_own_broker(name: str, partitions: int, measure: Callable[[Settings], dict]) -> dict:
    """Run `measure` on the embedded broker (or KAFKA_BOOTSTRAP_SERVERS'), on topics of its
    own: the measurements that are not a live run."""
    settings = Settings.from_env(partitions=partitions)
    data_dir = tempfile.mkdtemp(prefix=f"bank-bench-{name}-")
    with kafka_cluster(settings.bootstrap_servers, data_dir=data_dir) as bootstrap:
        return measure(replace(settings, bootstrap_servers=bootstrap,
                               topic_prefix=f"bench-{name}-{os.getpid()}-"))


def replay_main(args: argparse.Namespace) -> int:
    from kbank.bench.replay import replay_speed

    result = on_its_own_broker("replay", args.partitions,
                               lambda s: replay_speed(s, args.replay_events, args.accounts))
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(f"ledger events           {result['ledger_events']:,}")
        print(f"replay views (rebuild)  {result['rebuild_events_per_s']:,.0f} events/s")
        print(f"  in {result['verify_processes']} processes  "
              f"{result['rebuild_parallel_events_per_s']:,.0f} events/s")
        print(f"replay verify           {result['verify_events_per_s']:,.0f} events/s "
              f"({'OK' if result['verify_ok'] else 'FAILED'})")
        print(f"  in {result['verify_processes']} processes  "
              f"{result['verify_parallel_events_per_s']:,.0f} events/s "
              f"({'OK' if result['verify_parallel_ok'] else 'FAILED'})")
        print(f"  from a checkpoint, {result['incremental_new_events']:,} new events: "
              f"{result['incremental_verify_s']} s "
              f"({'OK' if result['incremental_ok'] else 'FAILED'})")
    return 0 if result["verify_ok"] and result["verify_parallel_ok"] and \
        result["incremental_ok"] and result["rebuild_parallel_ok"] else 1


def recon_main(args: argparse.Namespace) -> int:
    """--recon-lines: the reconciliation's parse and match, no Kafka."""
    from kbank.bench.books import recon_speed

    result = recon_speed(args.recon_lines)
    _print_result(args, result,
                  f"reconciliation of {result['lines']:,} lines: parsed (CSV) "
                  f"{result['parse_lines_per_s']:,} lines/s, matched "
                  f"{result['match_lines_per_s']:,} lines/s ({result['matched']:,} matched)")
    return 0 if result["all_matched"] else 1


def close_main(args: argparse.Namespace) -> int:
    """--close-events: a close of the books over a synthetic ledger, on its own broker."""
    from kbank.bench.books import close_speed

    result = on_its_own_broker("close", args.partitions,
                               lambda s: close_speed(s, args.close_events, args.accounts))
    _print_result(args, result,
                  f"a close over {result['events']:,} events and {result['accounts']:,} accounts: "
                  f"folded in {result['fold_s']} s ({result['events_per_s']:,} events/s), stored "
                  f"after {result['close_s']} s ({result['close_bytes']:,} bytes); peak memory "
                  f"{result['peak_rss_mb']} MB; "
                  f"{'conserved' if result['conserved'] else 'NOT CONSERVED'}")
    return 0 if result["conserved"] and not result["violations"] else 1


def failover_main(args: argparse.Namespace) -> int:
    """--views-failover: a views worker's time to serve again, on its own embedded broker."""
    from kbank.bench.failover import views_failover

    result = on_its_own_broker("failover", args.partitions,
                               lambda s: views_failover(s, args.views_failover, args.accounts))
    _print_result(args, result,
                  f"{result['ledger_events']:,} ledger events: a views worker from nothing "
                  f"{result['cold_fold_s']} s ({result['cold_fold_events_per_s']:,} events/s); "
                  f"restarted on its own store {result['restart_on_own_store_s']} s; another "
                  f"worker without a store taking over {result['failover_without_store_s']} s")
    return 0


def retention_main(args: argparse.Namespace) -> int:
    """--retention-days: the state with the id window against ids kept for good."""
    from kbank.bench.retention import plot_retention, retention_growth

    window_s = Settings.from_env().id_retention_s
    runs = {"window_s": window_s, "transfers_per_day": args.transfers_per_day,
            "with_window": retention_growth(args.retention_days, args.transfers_per_day, window_s),
            "kept_for_good": retention_growth(args.retention_days, args.transfers_per_day, None)}
    if args.json:
        print(orjson.dumps(runs).decode())
    else:
        columns = ("changelog_records", "changelog_mb", "restore_s", "store_mb")
        print(f"{'day':>4} " + " ".join(f"{c:>17}" for c in columns) + "   (with the "
              f"{window_s / 86_400:g}-day window / ids kept for good)")
        for a, b in zip(runs["with_window"], runs["kept_for_good"]):
            print(f"{a['day']:>4} " + " ".join(f"{f'{a[c]:,} / {b[c]:,}':>17}" for c in columns))
    try:
        path = plot_retention(runs["with_window"], runs["kept_for_good"], window_s / 86_400,
                              os.path.join(args.out, "retention.png"))
        print(f"plot: {path}", file=sys.stderr)
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
    return 0


def restore_main(args: argparse.Namespace) -> int:
    from kbank.bench.restore import restore_speed

    result = on_its_own_broker("restore", 1,
                               lambda s: restore_speed(s, args.accounts, args.restore_ids))
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(f"restored {result['changelog_records']:,} changelog records ({result['accounts']:,} "
              f"accounts, {result['applied_ids']:,} applied ids) in {result['seconds']} s: "
              f"{result['records_per_s']:,} records/s, {result['ids_per_s']:,} ids/s; "
              f"{result['steps']} poll-loop steps, the longest {result['longest_step_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
