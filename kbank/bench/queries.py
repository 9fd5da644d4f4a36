"""`bank bench --statement-events N`: what one statement over N events, and the top of the
largest balances among N accounts, cost a views worker.

An account's history of N ledger events is written to a real RocksDB store (rocksdict) in
the views table's own key and value layout; then statements over the whole history (the
window at the query budget's limit) and filtered pages are timed as the web endpoint runs
them (kbank.streams.views.queries over the store's reads). HTTP and routing are not in
these figures: they cost the same for every route.
"""
from __future__ import annotations

import random
import tempfile
import time

import orjson
from rocksdict import Options, Rdict

from kbank.streams.model import DAY_MS, Account, GENESIS_HASH, Position, chain_event, ledger_event
from kbank.streams.views import queries
from kbank.streams.views.fold import (BY_BALANCE, AccountView, add_to_totals, ranked_figure,
                                     ranking_entries)
from kbank.streams.views.queries import parse_rank_value, rank_value, top_ranked
from kbank.streams.views.layout import ViewKeys, history_totals, history_value, split_history_value

T0 = 20_000 * DAY_MS


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def statement_cost(events: int, repeats: int = 50) -> dict[str, float]:
    """p50/p99 ms of a statement over `events` events and of a filtered page."""
    with tempfile.TemporaryDirectory(prefix="bank-bench-queries-") as path:
        db = Rdict(path, Options(raw_mode=True))
        balance, head, totals = 0, GENESIS_HASH, [0, 0, {}]
        for seq in range(1, events + 1):
            kind, amount = ("opened", 0) if seq == 1 else ("credited", 7) if seq % 2 else \
                ("debited", 5)
            balance += {"opened": 0, "credited": 1, "debited": -1}[kind] * amount
            event = ledger_event("acct", seq, f"r{seq}", kind, amount, "other", balance,
                                 T0 + seq * 1_000, Position("transfers.requests", 0, seq),
                                 acct=Account())
            head, raw = chain_event(head, orjson.dumps(event))
            totals = add_to_totals(totals, kind, amount)
            db[ViewKeys.history("acct", seq)] = history_value(2 * seq, totals, raw)

        def read(seq: int):  # noqa: ANN202 - the web endpoint's history_entry
            stored = db.get(ViewKeys.history("acct", seq))
            if stored is None:
                return None
            offset, raw = split_history_value(stored)
            return orjson.loads(raw), offset

        def totals_after(seq: int):  # noqa: ANN202 - the web endpoint's totals_after
            stored = db.get(ViewKeys.history("acct", seq)) if seq else None
            return [0, 0, {}] if seq == 0 else None if stored is None else history_totals(stored)

        statements, pages = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            queries.statement(read, totals_after, events, T0, T0 + (events + 1) * 1_000, True, 0)
            statements.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            queries.transfers_page(read, events, queries.TransferFilter(min_amount=7), True, 50,
                                   None)
            pages.append((time.perf_counter() - t) * 1000)
        db.close()
        rankings = _ranking_cost(db_path=path + "-rank", accounts=events, repeats=repeats)
    return {**rankings, "events": events,
            "statement_p50_ms": round(_percentile(statements, 50), 2),
            "statement_p99_ms": round(_percentile(statements, 99), 2),
            "filtered_page_p50_ms": round(_percentile(pages, 50), 3),
            "filtered_page_p99_ms": round(_percentile(pages, 99), 3)}


def _ranking_cost(db_path: str, accounts: int, repeats: int) -> dict[str, float]:
    """p50/p99 ms of the 10 and the 100 largest balances among `accounts` accounts, read as
    a views worker reads its ranking index (one partition's store)."""
    rng = random.Random(5)
    db = Rdict(db_path, Options(raw_mode=True))
    try:
        for i in range(accounts):
            view = AccountView(balance=rng.randrange(1, 10**9), seq=2, active_day=T0 // DAY_MS,
                               active=2)
            db[ViewKeys.account(f"a{i}")] = view.to_bytes()
            for (ranking, group, bucket), figure in ranking_entries(view):
                db[ViewKeys.rank(ranking, group, bucket, f"a{i}")] = \
                    rank_value(bucket, figure, f"a{i}")
        prefix = ViewKeys.rank_prefix(BY_BALANCE, "USD")

        def entries():  # noqa: ANN202 - the store's values(partition, prefix)
            for key, value in db.items(from_key=prefix):
                if not key.startswith(prefix):
                    return
                yield parse_rank_value(value)

        def figure_of(account: str, bucket: int, stored: int) -> int | None:
            view = AccountView.from_bytes(db[ViewKeys.account(account)])
            return ranked_figure(view, BY_BALANCE, "USD", bucket, stored)

        out = {"ranking_accounts": accounts}
        for limit in (10, 100):
            took = []
            for _ in range(repeats):
                t = time.perf_counter()
                rows, complete = top_ranked(entries(), figure_of, limit)
                took.append((time.perf_counter() - t) * 1000)
                assert complete and len(rows) == limit
            out[f"top{limit}_p50_ms"] = round(_percentile(took, 50), 3)
            out[f"top{limit}_p99_ms"] = round(_percentile(took, 99), 3)
        return out
    finally:
        db.close()
        Rdict.destroy(db_path)
