"""`bank bench --close-events N` and `--recon-lines N`: what closing the books and reconciling
cost. A close over N synthetic ledger events among --accounts accounts (the fold and the
store, timed, and the memory of the process that makes it); the reconciliation's own speed:
a CSV statement of N lines parsed, and matched against N ledger events (no Kafka)."""
from __future__ import annotations

import multiprocessing
import random
import resource
import time
from typing import Any

from kbank.streams.config import Settings
from kbank.streams.topics import ensure_topics


def _make_close(settings: Settings, at_ms: int, answer: Any) -> None:  # noqa: ANN401 - a Queue
    from kbank.books.close import fold_close
    from kbank.streams.books.store import write_close

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    close, report = fold_close(settings, at_ms, show_progress=True)
    folded = time.perf_counter() - start
    digest, _ = write_close(settings, close)
    answer.put({"fold_s": round(folded, 2), "close_s": round(time.perf_counter() - start, 2),
                "accounts": len(close.accounts), "events": report.events,
                "close_bytes": len(close.to_bytes()), "violations": len(report.violations),
                "conserved": all(m.conserved for m in close.currencies.values()),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_at_start_mb": round(before / 1024, 1)})


def close_speed(settings: Settings, events: int, accounts: int) -> dict[str, Any]:
    from kbank.bench.replay import SyntheticLedger

    ensure_topics(settings)
    ledger = SyntheticLedger(settings, accounts)
    written = ledger.extend(events)
    answer: Any = multiprocessing.get_context("fork").Queue()
    maker = multiprocessing.get_context("fork").Process(
        target=_make_close, args=(settings, ledger.ts, answer))
    maker.start()
    result = answer.get(timeout=3600)
    maker.join()
    return {"ledger_events": written, **result,
            "events_per_s": round(result["events"] / result["fold_s"])}


def recon_speed(lines: int, seed: int = 7) -> dict[str, Any]:
    """A statement of `lines` lines (CSV) parsed, then matched against as many ledger events:
    nine in ten by reference, the rest by amount and date."""
    from kbank.books.matching import LedgerItem, Rules, reconcile
    from kbank.books.statements import parse_csv

    rng = random.Random(seed)
    rows, items = ["date,amount,currency,reference,counterparty,description"], []
    for i in range(lines):
        day = f"2026-12-{1 + i * 28 // lines:02d}"
        amount = rng.randint(1, 10**6) * (1 if i % 2 else -1)
        ref = f"ref-{i}" if i % 10 else ""
        rows.append(f"{day},{amount / 100:.2f},EUR,{ref},party-{i % 50},line {i}")
        items.append(LedgerItem(i + 1, day, amount, "EUR", ref or None, f"party-{i % 50}",
                                "credited" if amount > 0 else "debited"))
    raw = ("\n".join(rows) + "\n").encode()
    start = time.perf_counter()
    parsed = parse_csv("bank-eur", raw)
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    results = reconcile(parsed, items, Rules(grace_days=0))
    match_s = time.perf_counter() - start
    matched = sum(r["status"] == "matched" for r in results.values())
    return {"lines": lines, "parse_lines_per_s": round(lines / parse_s),
            "match_lines_per_s": round(lines / match_s), "matched": matched,
            "all_matched": matched == lines}
