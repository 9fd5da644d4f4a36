"""The `make run` demo: a small workload, then balances, a rate and a verify."""
from __future__ import annotations

import random
import sys
import time
import urllib.error
import urllib.request

import orjson

from kbank.streams.apikeys import bearer
from kbank.streams.client import OutcomeWatcher, RequestSender
from kbank.streams.config import Settings
from kbank.streams.model import DECIDED_STATUSES
from kbank.streams.progress import progress_bar


def _progress(label: str):  # noqa: ANN202 - OutcomeWatcher.wait's callback
    bar = None

    def show(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(f"  {label}", "requests", total=total, file=sys.stdout)
        bar.update(done - bar.n)
        if done == total:
            bar.close()
    return show


def run_demo(settings: Settings, web_url: str | None = None, accounts: int = 200,
             transfers: int = 5000, seed: int = 7, api_key: str | None = None) -> bool:
    """Run the demo workload; True if every request finished and the ledger checks pass.

    Request ids are unique per run, so a second `make run` on the same data
    adds to the first (its open_account requests are rejected account_exists)."""
    rng = random.Random(seed)
    run = f"{int(time.time())}"
    names = [f"acct-{i:04d}" for i in range(accounts)]
    watcher = OutcomeWatcher(settings)
    sender = RequestSender(settings)
    try:
        setup = []
        for name in names:
            for req in ({"type": "open_account", "request_id": f"{run}-open-{name}", "account": name,
                         "daily_limit": 1_000_000},
                        {"type": "deposit", "request_id": f"{run}-dep-{name}", "account": name,
                         "amount": 10_000}):
                setup.append(sender.send(req))
        sender.flush()
        print(f"demo: opening {accounts} accounts with 100.00 each")
        if not watcher.wait(setup, 120, _progress("set-up requests finished")):
            print("demo: set-up did not finish in 120 s", flush=True)
            return False
        ids = []
        start = time.monotonic()
        for i in range(transfers):
            src, dst = rng.sample(names, 2)
            req = {"type": "transfer", "request_id": f"{run}-t-{i}", "from": src, "to": dst,
                   "amount": rng.randint(1, 4_000)}
            ids.append(sender.send(req))
        sender.flush()
        print(f"demo: sent {transfers} transfers between random accounts")
        ok = watcher.wait(ids, 120, _progress("transfers finished"))
        elapsed = time.monotonic() - start
        statuses = [watcher.status.get(r) for r in ids]
        print(f"demo: {statuses.count('completed')} completed, {statuses.count('rejected')} rejected "
              f"in {elapsed:.2f} s ({len(ids) / elapsed:,.0f} transfers/s end to end)"
              + ("" if ok else " [timed out]"))
        ok = _two_phase(sender, watcher, run, names) and ok
    finally:
        watcher.close()
    from kbank.replay.verify import verify

    report = verify(settings)
    print("demo: ledger check")
    print("  " + report.render().replace("\n", "\n  "))
    _print_balances(settings, names[:5], web_url, api_key)
    return ok and report.ok


def _two_phase(sender: RequestSender, watcher: OutcomeWatcher, run: str, names: list[str]) -> bool:
    """A hold captured in part, and linked transfers: one applied whole, one refused whole."""
    a, b, c, d, e = names[:5]
    hold = f"{run}-hold"
    steps = [   # fresh funds first: the random transfers left these balances anywhere
        ({"type": "deposit", "request_id": f"{run}-fund-a", "account": a, "amount": 5_000},
         "completed"),
        ({"type": "deposit", "request_id": f"{run}-fund-c", "account": c, "amount": 3_000},
         "completed"),
        ({"type": "hold", "request_id": hold, "from": a, "to": b, "amount": 2_500, "timeout_s": 60},
         "held"),
        ({"type": "post", "request_id": f"{run}-capture", "hold_id": hold, "from": a,
          "amount": 2_000}, "completed"),
        ({"type": "linked", "request_id": f"{run}-linked", "from": c,
          "transfers": [{"to": d, "amount": 1_000}, {"to": e, "amount": 50}]}, "completed"),
        ({"type": "linked", "request_id": f"{run}-linked-bad", "from": c,
          "transfers": [{"to": d, "amount": 1_000}, {"to": "no-such-account", "amount": 50}]},
         "rejected"),
    ]
    print(f"demo: a hold of 25.00 from {a} to {b}, 20.00 of it captured; linked transfers from {c}")
    ok = True
    for request, want in steps:   # one at a time: the capture needs the hold decided
        rid = request["request_id"]
        key = sender.send(request)
        sender.flush()
        deadline = time.monotonic() + 60
        while watcher.status.get(key) not in DECIDED_STATUSES and time.monotonic() < deadline:
            time.sleep(0.05)
        got = watcher.status.get(key)
        print(f"  {request['type']} {rid.removeprefix(run + '-')}: {got} (expected {want})")
        ok = ok and got == want
    return ok


def _print_balances(settings: Settings, names: list[str], web_url: str | None,
                    api_key: str | None) -> None:
    """Balances folded from the ledger, and the same read back over HTTP (with the
    operator's API key)."""
    from kbank.replay.ledger import LedgerFold
    from kbank.streams import topics
    from kbank.streams.client import read_topic

    fold = LedgerFold()
    for msg in read_topic(settings, settings.topic(topics.LEDGER)):
        fold.apply(msg.value())
    print("demo: some balances (minor units), from the ledger and over HTTP:")
    for name in names:
        acct = fold.accounts.get(name)
        if not acct:
            continue
        line = f"  {name}: ledger balance {acct.balance} after {acct.seq} events"
        if web_url:
            url = f"{web_url}/accounts/{name}?min_seq={acct.seq}"
            try:
                view = _get_when_caught_up(url, api_key, deadline=time.monotonic() + 60)
                line += f" | GET {url} -> balance {view['balance']}, seq {view['seq']}"
            except OSError as exc:
                line += f" | GET {url} failed: {exc}"
        print(line)
    if web_url:
        with urllib.request.urlopen(_authorized(f"{web_url}/stats", api_key), timeout=15) as resp:
            print(f"demo: GET {web_url}/stats -> {resp.read().decode()}")


def _authorized(url: str, api_key: str | None) -> urllib.request.Request:
    return urllib.request.Request(url, headers=bearer(api_key))


def _get_when_caught_up(url: str, api_key: str | None, deadline: float) -> dict:
    """GET a view, asking again while the views answer 503 (still folding the demo's ledger,
    each answer after waiting up to the server's own timeout) until the deadline."""
    while True:
        try:
            with urllib.request.urlopen(_authorized(url, api_key), timeout=15) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
