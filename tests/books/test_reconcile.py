"""Reconciliation against the real broker, the engine and the reconciler running as `bank up`
runs them: a generated statement in each format, with planted breaks, each reported as what
it is and nothing else; a re-import that changes nothing; the reconciler killed with SIGKILL
while it writes, losing and doubling nothing; other rules re-run with the difference shown."""
from __future__ import annotations

import dataclasses
import signal
import threading
from collections import defaultdict
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from kbank.books.matching import MATCHED, MISMATCHED, UNMATCHED, Rules, differences
from kbank.books.reconcile import import_lines, stored_results, write_rules
from kbank.streams.books.recon import split_result_key
from kbank.books.reconcile_cli import rerun
from kbank.books.statements import StatementError, parse_file
from kbank.streams import topics
from kbank.streams.apikeys import AUDITOR, CLIENT
from kbank.streams.keystore import create_key
from kbank.streams.client import read_topic
from kbank.streams.model import BALANCE_SIGN
from tests.books.statement_files import SUFFIX, WRITERS
from tests import http
from tests.workload import Workload, wait_until

FORMATS = tuple(WRITERS)
PAYOUTS, COLLECTIONS = 40, 40
RULES = Rules(grace_days=0)      # the ledger's days are today's: judge at once


def ref(bank: str) -> str:
    """The bank's prefix of its references: MT940 carries 16 characters of one."""
    return bank[5:7]


def settlement_activity(work: Workload, bank: str, customers: list[str]) -> None:
    """A month of a settlement account's traffic, compressed: payouts, collections, a batched
    settlement of three collections under one reference, and a payout the engine refuses."""
    for i in range(PAYOUTS):
        work.send({"type": "transfer", "request_id": f"{bank}-pay-{i}", "from": bank,
                   "to": customers[i % len(customers)], "amount": 100 + i, "currency": "EUR",
                   "external_ref": f"{ref(bank)}:pay-{i}"})
    for i in range(COLLECTIONS):
        work.send({"type": "transfer", "request_id": f"{bank}-col-{i}",
                   "from": customers[i % len(customers)], "to": bank, "amount": 200 + i,
                   "currency": "EUR", "external_ref": f"{ref(bank)}:col-{i}"})
    for i in range(3):
        work.send({"type": "transfer", "request_id": f"{bank}-batch-{i}", "from": customers[i],
                   "to": bank, "amount": 10 + i, "currency": "EUR",
                   "external_ref": f"{ref(bank)}:batch-1"})
    work.send({"type": "transfer", "request_id": f"{bank}-too-much", "from": bank,
               "to": customers[0], "amount": 10**9, "currency": "EUR",
               "external_ref": f"{ref(bank)}:pay-refused"})


def statement_rows(settings, bank: str) -> list[tuple]:  # noqa: ANN001
    """What the bank's statement shows: every movement of the account, the batch as one line."""
    rows, batch = [], 0
    for msg in read_topic(settings, settings.topic(topics.LEDGER)):
        event = orjson.loads(msg.value())
        sign = BALANCE_SIGN[event["kind"]]
        if event["account"] != bank or sign == 0:
            continue
        day = datetime.fromtimestamp(event["ts"] / 1000, timezone.utc).date().isoformat()
        said = event.get("external_ref") or event["request_id"]
        if said == f"{ref(bank)}:batch-1":
            batch += sign * event["amount"]
            continue
        rows.append((day, sign * event["amount"], "EUR", said, event.get("counterparty"), said))
    assert batch == 10 + 11 + 12, (bank, batch, [r for r in rows if "batch" in r[3]])
    rows.append((rows[-1][0], batch, "EUR", f"{ref(bank)}:batch-1", None, "batched settlement"))
    return rows


def plant_breaks(bank: str, rows: list[tuple]) -> list[tuple]:
    """A missing line, a wrong amount, a duplicate line, a line for a refused transfer."""
    by_ref = {r[3]: r for r in rows}
    planted = [r for r in rows if r[3] != f"{ref(bank)}:pay-3"]                      # missing
    planted = [r if r[3] != f"{ref(bank)}:col-5" else (*r[:1], r[1] + 1, *r[2:])   # wrong amount
               for r in planted]
    planted.append(by_ref[f"{ref(bank)}:pay-7"])                                     # duplicate
    planted.append((rows[0][0], -500, "EUR", f"{ref(bank)}:pay-refused", None, "refused payout"))
    return planted


def results_of(settings, bank: str) -> dict[str, dict]:  # noqa: ANN001
    return stored_results(settings).get(bank, {})


def breaks(bank: str, results: dict[str, dict]) -> list[tuple]:
    return sorted((r["status"], r["side"], r["reference"].removeprefix(f"{ref(bank)}:"), r["field"],
                   (r["reason"] or "").split(" of line:")[0])
                  for r in results.values() if r["status"] != MATCHED)


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: keeps each body."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        Receiver.received.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_statements_in_three_formats_report_each_planted_break_and_nothing_else(
        settings, pool_factory, views_factory, tmp_path):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    settings = dataclasses.replace(
        settings, webhook_allowed_hosts=f"127.0.0.1:{receiver.server_port}")
    pool_factory(settings, 2)
    url = views_factory(settings, 1).url("0")
    work = Workload(settings)
    banks = [f"bank-{f}" for f in FORMATS]
    customers = [f"cust-{i}" for i in range(6)]
    try:
        for name in banks + customers:
            work.send({"type": "open_account", "request_id": f"open-{name}", "account": name,
                       "currency": "EUR"})
        for name in banks + customers:
            work.send({"type": "deposit", "request_id": f"dep-{name}", "account": name,
                       "amount": 1_000_000, "currency": "EUR"})
        work.sender.flush()
        assert work.wait(120)
        for bank in banks:
            settlement_activity(work, bank, customers)
        work.sender.flush()
        assert work.wait(180), "the traffic did not complete"
    finally:
        work.close()

    # the breaks go to a webhook that asks for them, once each
    hook = http.request("POST", f"{url}/webhooks", orjson.dumps(
        {"url": f"http://127.0.0.1:{receiver.server_port}/breaks", "events": ["reconciliation_break"],
         "accounts": banks}))
    assert hook.status == 201, hook.body
    pool_factory(settings, 1, command="break-webhooks")

    # the reconciler runs before any statement (it reads no ledger yet), then is killed with
    # SIGKILL in its second transaction, that transaction's results produced
    reconciler = pool_factory(settings, 0, command="reconciler")
    reconciler.start("0", {"BANK_FAULT_RECONCILER_CRASH_AT": "2"})
    log = tmp_path / "logs" / "reconciler-0.log"
    wait_until(lambda: log.exists() and "accounts with statements" in log.read_text(), 60,
               "the reconciler to start")
    for fmt, bank in zip(FORMATS, banks):
        write_rules(settings, bank, RULES)
        path = tmp_path / f"{bank}{SUFFIX[fmt]}"
        path.write_bytes(WRITERS[fmt](plant_breaks(bank, statement_rows(settings, bank))))
        lines = parse_file(bank, path)
        assert import_lines(settings, lines) == (len(lines), 0)
        assert import_lines(settings, lines) == (0, len(lines)), "a re-import adds nothing"
    expected = {bank: rerun(settings, bank, RULES) for bank in banks}
    want_breaks = [
        (MISMATCHED, "both", "col-5", "amount", "the amount differs from the ledger's"),
        (UNMATCHED, "ledger", "pay-3", None, "missing from the statement"),
        (UNMATCHED, "statement", "pay-7", None, "a duplicate"),
        (UNMATCHED, "statement", "pay-refused", None,
         "the ledger refused the request of this reference"),
    ]
    for bank in banks:
        assert breaks(bank, expected[bank]) == sorted(want_breaks), bank
        matched = [r for r in expected[bank].values() if r["status"] == MATCHED]
        # the deposit, payouts and collections but pay-3 and col-5, and the batch of three
        assert len(matched) == 1 + PAYOUTS - 1 + COLLECTIONS - 1 + 1, bank
        assert sorted(len(r["events"]) for r in matched)[-1] == 3

    assert reconciler.procs["0"].wait(90) == -signal.SIGKILL
    committed = stored_results(settings)
    assert len(committed) == 1, "one account's transaction committed, the next one cut"
    hidden = {split_result_key(m.key())[0]
              for m in read_topic(settings, settings.topic(topics.RECON_RESULTS),
                                  isolation="read_uncommitted")} - set(committed)
    assert len(hidden) == 1, "the cut transaction had produced its results (read uncommitted)"
    reconciler.start("0")          # its successor: the cut transaction is aborted, redone once
    wait_until(lambda: all(results_of(settings, b) == expected[b] for b in banks), 90,
               "every account's results")
    history: dict[bytes, list] = defaultdict(list)
    for msg in read_topic(settings, settings.topic(topics.RECON_RESULTS)):
        history[msg.key()].append(msg.value())
    for key, values in history.items():
        assert all(a != b for a, b in zip(values, values[1:])), (split_result_key(key), values)

    served_over_http(settings, url, banks, expected)
    breaks_sent = {(b, k) for b in banks for k, r in expected[b].items() if r["status"] != MATCHED}
    wait_until(lambda: {(m["account"], m["item"]) for m in Receiver.received} == breaks_sent, 60,
               "every break's webhook")
    assert all(m["type"] == "reconciliation_break" and m["data"]["status"] != MATCHED
               for m in Receiver.received)
    receiver.shutdown()

    # other rules, re-run over the same log: the difference, nothing written
    waiting = dataclasses.replace(RULES, grace_days=30)
    changed = differences(results_of(settings, banks[0]), rerun(settings, banks[0], waiting))
    assert sorted(k.split(":")[0] for k, v in changed.items() if v is None) == \
        ["event", "line", "line"], "the unmatched become pending; the mismatch stays"
    assert results_of(settings, banks[0]) == expected[banks[0]]


def served_over_http(settings, url: str, banks: list[str], expected: dict) -> None:  # noqa: ANN001
    """GET /reconciliation and an account's breaks: the operator's and the auditor's only."""
    auditor = http.known_key(url, create_key(settings, AUDITOR).token)
    client = http.known_key(url, create_key(settings, CLIENT, account_prefix="cust-").token)
    wait_until(lambda: http.get_json(f"{url}/reconciliation")["breaks"] == 4 * len(banks), 30,
               "the views to read the results")
    first = http.get_json(f"{url}/reconciliation?limit=1", key=auditor)
    assert list(first["accounts"]) == [first["next"]] == sorted(banks)[:1]
    assert first["breaks"] == 4 * len(banks)
    for bank in banks:
        body = http.get_json(f"{url}/reconciliation/{bank}?status=unmatched", key=auditor)
        assert [r["item"] for r in body["results"]] == sorted(
            k for k, r in expected[bank].items() if r["status"] == UNMATCHED)
        pages, after = [], ""
        while after is not None:
            page = http.get_json(f"{url}/reconciliation/{bank}?limit=10&after={after}")
            pages += page["results"]
            after = page["next"]
        assert {r.pop("item"): r for r in pages} == expected[bank]
    for path in ("/reconciliation", f"/reconciliation/{banks[0]}"):
        assert http.request("GET", url + path, key=client).status == 403, path
    assert http.request("GET", f"{url}/reconciliation/{banks[0]}?status=lost").status == 400


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_with_a_bad_line_is_refused_whole_with_its_line_numbers(tmp_path, fmt):
    rows = [("2026-12-07", 100, "EUR", "r-1", None, "fine"),
            ("2026-12-07", 250, "EUR", "r-2", None, "fine too")]
    path = tmp_path / f"s{SUFFIX[fmt]}"
    raw = WRITERS[fmt](rows)
    path.write_bytes(raw.replace(b"2026-12-07", b"2026-12-77", 1) if fmt != "mt940"
                     else raw.replace(b"C2,50NTRF", b"C2,505NTRF"))
    with pytest.raises(StatementError) as refused:
        parse_file("bank", path)
    assert all(p.startswith("line ") for p in refused.value.problems), refused.value.problems
    path.write_bytes(raw)
    assert [ln.amount for ln in parse_file("bank", path)] == [100, 250]


@pytest.mark.parametrize("broken", [b":20:X\n:61:2613011201C1,00NTRFr//b\n",     # month 13
                                    b":20:X\n:61:ZZZZ\n",                         # no pattern
                                    b":20:X\n:61:2612011201C1,2,3NTRFr//b\n"])    # no amount
def test_an_mt940_file_the_library_cannot_read_is_refused_not_a_crash(tmp_path, broken):
    path = tmp_path / "s.sta"
    path.write_bytes(broken)
    with pytest.raises(StatementError, match="not an MT940 statement"):
        parse_file("bank", path)
