"""`bank reconcile`: import a statement file, set an account's rules, report the results
(or what other rules would change)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from kbank.books.matching import MATCHED, Rules, differences, reconcile
from kbank.books.reconcile import (AccountLedger, import_lines, read_account, stored_lines,
                                   stored_results, write_rules)
from kbank.books.statements import FORMATS, StatementError, parse_file
from kbank.streams import kafka
from kbank.streams.config import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bank reconcile", description="Reconcile accounts against "
                                "the statements of the bank or provider they mirror.")
    sub = p.add_subparsers(dest="what", required=True)
    i = sub.add_parser("import", help="validate a statement file and import its new lines "
                       "(all or none; a line imported before is not imported again)")
    i.add_argument("--account", required=True, help="the account the statement is for")
    i.add_argument("--format", choices=FORMATS, help="csv, mt940 or camt053 (default: by the "
                   "file's name: .csv, .sta, .xml)")
    i.add_argument("--column", action="append", default=[], metavar="FIELD=HEADER",
                   help="CSV: the header of a field (date, amount, currency, reference, "
                   "counterparty, description); by default the field's own name")
    i.add_argument("file")
    r = sub.add_parser("rules", help="set (or show) an account's matching rules")
    r.add_argument("--account", required=True)
    r.add_argument("--set", metavar="FILE", help="a JSON object of rules (README: Reconciliation)")
    rep = sub.add_parser("report", help="an account's results; with --rules, what those rules "
                         "would change")
    rep.add_argument("--account", required=True)
    rep.add_argument("--from", dest="start", metavar="YYYY-MM-DD")
    rep.add_argument("--to", dest="end", metavar="YYYY-MM-DD")
    rep.add_argument("--rules", metavar="FILE", help="re-run over the same lines and ledger with "
                     "these rules and show the difference (nothing is written)")
    rep.add_argument("--json", action="store_true", help="every result, one JSON line each")
    return p


def in_range(result: dict[str, Any], start: str | None, end: str | None) -> bool:
    return (start is None or result["value_date"] >= start) and \
        (end is None or result["value_date"] <= end)


def describe(item: str, result: dict[str, Any]) -> str:
    what = f"{result['status']:<10} {result['value_date']} {result['amount']:>12} " \
           f"{result['currency']} ref={result['reference'] or '-'}"
    return f"{what}  {item}" + (f"  ({result['reason']})" if result["reason"] else "")


def rerun(settings: Settings, account: str, rules: Rules) -> dict[str, dict[str, Any]]:
    """The account's results under `rules`, from its lines and ledger (read as the tools)."""
    lines = list(stored_lines(settings).get(account, {}).values())
    ledger = AccountLedger()
    read_account(settings, account, kafka.TOOLS, ledger)
    return reconcile(lines, ledger.items(account, rules), rules)


def report(settings: Settings, args: argparse.Namespace) -> int:
    stored = stored_results(settings).get(args.account, {})
    if args.rules:
        proposed = rerun(settings, args.account, Rules.from_json(Path(args.rules).read_bytes()))
        changed = differences(stored, proposed)
        print(f"{args.account}: {len(changed)} of {len(stored)} results would change")
        for item, after in sorted(changed.items()):
            before = stored.get(item)
            print(f"  {item}: {before['status'] if before else 'none'} -> "
                  f"{describe(item, after) if after else 'none'}")
        return 0
    shown = {k: v for k, v in sorted(stored.items()) if in_range(v, args.start, args.end)}
    if args.json:
        for item, result in shown.items():
            print(orjson.dumps({"item": item, **result}).decode())
        return 0
    counts: dict[str, int] = {}
    for result in shown.values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    print(f"{args.account}: {len(shown)} results "
          f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none yet'})")
    for item, result in shown.items():
        if result["status"] != MATCHED:
            print("  " + describe(item, result))
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.what == "import":
            columns = dict(c.split("=", 1) for c in args.column if "=" in c)
            lines = parse_file(args.account, args.file, args.format, columns)
            written, known = import_lines(settings, lines)
            print(f"{args.file}: {len(lines)} lines valid; {written} imported, {known} imported "
                  "before")
            return 0
        if args.what == "rules":
            if args.set:
                write_rules(settings, args.account, Rules.from_json(Path(args.set).read_bytes()))
            print(f"{args.account}: rules set" if args.set else
                  "rules are shown by bank reconcile report; set them with --set FILE")
            return 0
        return report(settings, args)
    except StatementError as exc:
        print(f"reconcile: {args.file} refused, nothing imported:", file=sys.stderr)
        for problem in exc.problems[:50]:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except (ValueError, orjson.JSONDecodeError) as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
