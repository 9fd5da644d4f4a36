"""`bank close`: make a close of the books at an instant, list the closes, show one."""
from __future__ import annotations

import argparse
import re
import sys
import time

import orjson

from kbank.books.close import NotSettled, fold_close, wait_settled
from kbank.streams.books.closes import Close, CloseError, close_id, split_close_name
from kbank.streams.books.store import list_closes, read_close, write_close
from kbank.streams.books.trial import TooManyGroups, trial_balance
from kbank.streams.config import Settings
from kbank.streams.model import DAY_MS, is_currency
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
    what.add_argument("--daily", metavar="HH:MM", help="run until stopped, closing the books "
                      "every day at this cut-off (in --zone), each once it is settled; a cut-off "
                      "missed while it was not running is closed when it starts")
    p.add_argument("--zone", default="+00:00", help="with --daily: the cut-off's UTC offset "
                   "(+01:00, -05:00; default UTC)")
    p.add_argument("--currency", help="close this currency's books only (its own cut-off: "
                   "run one --daily per currency)")
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


def make(settings: Settings, at_ms: int, timeout_s: float, currency: str | None = None) -> int:
    if at_ms > time.time() * 1000:
        print(f"close: {close_id(at_ms, currency)} is in the future", file=sys.stderr)
        return 2
    started = time.monotonic()
    wait_settled(settings, at_ms, timeout_s, say=lambda text: print(text, flush=True))
    close, report = fold_close(settings, at_ms, show_progress=True, currency=currency)
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


def cut_offs(hh_mm: str, zone: str, now_ms: int) -> tuple[int, int]:
    """The latest daily cut-off at or before `now_ms` and the next one (ms since the epoch)."""
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", hh_mm)
    offset = re.fullmatch(r"([+-])([01]\d):([0-5]\d)", zone)
    if match is None or offset is None:
        raise QueryError("--daily is HH:MM and --zone +HH:MM or -HH:MM")
    sign = 1 if offset[1] == "+" else -1
    shift_ms = sign * (int(offset[2]) * 60 + int(offset[3])) * 60_000
    in_day_ms = (int(match[1]) * 60 + int(match[2])) * 60_000
    local_now = now_ms + shift_ms
    latest = local_now - (local_now % DAY_MS) + in_day_ms
    if latest > local_now:
        latest -= DAY_MS
    return latest - shift_ms, latest - shift_ms + DAY_MS


def daily(settings: Settings, args: argparse.Namespace) -> int:
    """Close every day at the cut-off, each once; runs until stopped."""
    while True:
        latest, upcoming = cut_offs(args.daily, args.zone, int(time.time() * 1000))
        made = {m["id"] for m in list_closes(settings)}
        if close_id(latest, args.currency) not in made:
            code = make(settings, latest, args.timeout, args.currency)
            if code != 0:
                return code
        wait_s = (upcoming - time.time() * 1000) / 1000
        print(f"next close {close_id(upcoming, args.currency)} in {wait_s / 3600:.1f} h",
              flush=True)
        time.sleep(max(1.0, wait_s))


def show(settings: Settings, args: argparse.Namespace) -> int:
    instant, currency = split_close_name(args.show)
    close = read_close(settings, close_id(parse_time(instant), currency))
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
    if args.currency is not None and not is_currency(args.currency):
        print("close: --currency is a code of 3 to 12 upper-case letters or digits", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        if args.list:
            for manifest in list_closes(settings):
                print(orjson.dumps(manifest).decode())
            return 0
        if args.show:
            return show(settings, args)
        if args.daily:
            return daily(settings, args)
        return make(settings, parse_time(args.at), args.timeout, args.currency)
    except (QueryError, CloseError, NotSettled, TooManyGroups) as exc:
        print(f"close: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
