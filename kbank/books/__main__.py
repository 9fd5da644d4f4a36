"""`bank close`: make a close of the books at an instant, list the closes, show one."""
from __future__ import annotations

import argparse
import sys
import time

import orjson

from kbank.books.close import NotSettled, fold_close, wait_settled
from kbank.streams.books.closes import Close, CloseError, close_id
from kbank.streams.books.store import list_closes, read_close, write_close
from kbank.streams.books.trial import TooManyGroups, trial_balance
from kbank.streams.config import Settings
from kbank.streams.views.queries import QueryError, parse_time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bank close", description="Close the books: every account's balance, held amount "
        "and seq at an instant, exact across partitions, with what was in flight; stored in "
        "books.closes and served at GET /closes.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--at", metavar="TIME", help="make the close at TIME (ISO-8601, UTC when "
                      "no zone is given, or epoch ms); waits until the instant is settled")
    what.add_argument("--list", action="store_true", help="every stored close, one JSON line each")
    what.add_argument("--show", metavar="ID", help="a stored close (its id or its instant)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="how long to wait for the engine to decide every input up to TIME (s)")
    p.add_argument("--accounts", action="store_true", help="with --show: every account, JSON lines")
    p.add_argument("--trial-balance", action="store_true", help="with --show: the trial balance")
    p.add_argument("--by", metavar="KEY", help="with --trial-balance: group by this metadata key")
    p.add_argument("--anchor", action="store_true", help="with --show: the chain heads the close "
                   "stops at, for bank replay verify --against")
    return p


def render(close: Close) -> str:
    lines = [f"close {close.id}: {len(close.accounts)} accounts, "
             f"{len(close.in_flight)} transfers in flight"]
    for cur, m in sorted(close.currencies.items()):
        lines.append(f"  {cur:<6} balances {m.balances} (held {m.held}) + in flight {m.in_flight}"
                     f" = deposits {m.deposits} - withdrawals {m.withdrawals}: "
                     f"{'conserved' if m.conserved else 'NOT CONSERVED'}")
    for cut in close.partitions:
        lines.append(f"  ledger[{cut.partition}] {cut.events} events, ends at offset "
                     f"{cut.offset} hash {cut.hash[:16]}...")
    return "\n".join(lines)


def make(settings: Settings, at_text: str, timeout_s: float) -> int:
    at_ms = parse_time(at_text)
    if at_ms > time.time() * 1000:
        print(f"close: {close_id(at_ms)} is in the future", file=sys.stderr)
        return 2
    started = time.monotonic()
    wait_settled(settings, at_ms, timeout_s, say=lambda text: print(text, flush=True))
    close, report = fold_close(settings, at_ms, show_progress=True)
    if report.violations:
        print(f"close {close.id} refused: the ledger up to it breaks its checks:", file=sys.stderr)
        for violation in report.violations[:20]:
            print(f"  - {violation}", file=sys.stderr)
        return 1
    digest, written = write_close(settings, close)
    print(render(close))
    print(f"{'stored' if written else 'already stored, the same bytes'}: sha256 {digest} "
          f"({time.monotonic() - started:.1f} s)")
    return 0


def show(settings: Settings, args: argparse.Namespace) -> int:
    close = read_close(settings, close_id(parse_time(args.show)))
    if args.anchor:
        for head in close.anchor():
            print(orjson.dumps(head).decode())
    elif args.accounts:
        for account in close.accounts:
            print(orjson.dumps(account.__dict__).decode())
    elif args.trial_balance:
        print(orjson.dumps(trial_balance(close, args.by), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(close))
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.list:
            for manifest in list_closes(settings):
                print(orjson.dumps(manifest).decode())
            return 0
        if args.show:
            return show(settings, args)
        return make(settings, args.at, args.timeout)
    except (QueryError, CloseError, NotSettled, TooManyGroups) as exc:
        print(f"close: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
