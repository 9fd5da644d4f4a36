"""`bank replay` / `python -m kbank.replay`: rebuild, recompute, verify and inspect state from the logs."""
from __future__ import annotations

import argparse
import os
import sys

from kbank.streams.config import Settings, describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bank replay", description=__doc__, epilog=describe(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check the invariants over the logs; exit 1 on any violation")
    p.add_argument("--complete", action="store_true",
                   help="also require every request to have a final outcome (nothing in flight)")
    p.add_argument("--anchor", action="store_true",
                   help="print each ledger partition's hash-chain head as JSON lines (keep them "
                        "elsewhere: --against proves later the log was not rewritten)")
    p.add_argument("--against", metavar="FILE",
                   help="also require the chains to pass through the heads of an earlier --anchor")
    p.add_argument("--ledger-topic", metavar="TOPIC",
                   help="check this copy of ledger.events (a backup) in its place")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="fold the ledger's partitions in this many processes (default: one per "
                        "core) and merge their sums for the global checks")
    p.add_argument("--checkpoint", action="store_true",
                   help="if this verify passes, sign off where it ended (topic verify.checkpoints)")
    p.add_argument("--since-checkpoint", action="store_true",
                   help="go on from the last checkpoint: read only what came after it (the log "
                        "must still pass through its chain heads, else refused, exit 2)")
    p = sub.add_parser("views", help="rebuild every view from the logs into a fresh store and "
                                     "compare it with the live views")
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="live web endpoint to compare with (default http://127.0.0.1:8080); "
                        "'none' only rebuilds")
    p.add_argument("--store", default=None, help="directory of the fresh store (default: a temp dir)")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="rebuild the partitions in this many processes, each into a store of "
                        "its own under --store (default: one per core)")
    p = sub.add_parser("recompute", help="re-decide the request log with the current rules into a "
                                         "new generation and list what it decides differently")
    p.add_argument("--generation", required=True, help="id of the new generation (names its topics)")
    p.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                   help="re-decide the partitions in this many processes (default: one per core "
                        "but one, which the broker's reads need: on 2 cores two processes were "
                        "no faster, BENCHMARKS.md); if the new rules change messages between "
                        "partitions, in one")
    p = sub.add_parser("switch", help="make the views serve a generation (after reviewing its diff); "
                                      "views workers pick it up when restarted")
    p.add_argument("--generation", required=True, help="generation id, or 'live' for the live one")
    p = sub.add_parser("as-of", help="an account's balance and history at a point of the log")
    p.add_argument("--account", required=True)
    point = p.add_mutually_exclusive_group(required=True)
    point.add_argument("--offset", type=int, help="ledger offset in the account's partition (exclusive)")
    point.add_argument("--time", help="ISO-8601 time or epoch milliseconds (inclusive)")
    args = parser.parse_args(argv)
    settings = Settings.from_env().needs_broker("replay")
    if args.command == "verify":
        from kbank.replay.verify import main as verify_main

        return verify_main(settings, args.complete, args.anchor, args.against, args.ledger_topic,
                           max(1, args.processes), args.since_checkpoint, args.checkpoint)
    if args.command == "views":
        from kbank.replay.views import main as views_main

        return views_main(settings, None if args.url == "none" else args.url, args.store,
                          max(1, args.processes))
    if args.command == "recompute":
        from kbank.replay.recompute import main as recompute_main

        return recompute_main(settings, args.generation, max(1, args.processes))
    if args.command == "switch":
        from kbank.streams.generations import switch

        switch(settings, args.generation)
        print(f"views generation set to {args.generation!r}; restart the views workers to serve it")
        return 0
    if args.command == "as-of":
        from kbank.replay.asof import main as asof_main

        return asof_main(settings, args.account, args.offset, args.time)
    return 2


if __name__ == "__main__":
    sys.exit(main())
