"""A views worker cut from every broker while its clients still reach it. It keeps serving
what it folded, which falls behind the ledger: a read asking for a `min_seq` it has not
folded is refused (503, behind), never answered with an older balance, and every answer
carries Bank-Brokers-Unreachable-Seconds once the brokers have been silent past
BANK_VIEWS_STALE_AFTER_S (6 s here, 15 by default; /health says degraded). When the cut
heals it catches up and serves the new balance.

The negative control starts the views with BANK_UNSAFE_VIEWS_SERVE_ISOLATED, a worker that
serves after isolation: it answers the min_seq read with the old balance, and the check
fails.
"""
from __future__ import annotations

import time

import pytest

from kbank.streams.partitioning import partition_for
from kbank.streams.views.web import BROKERS_UNREACHABLE_HEADER
from tests import http
from tests.hosts.conftest import BROKERS, ENGINES, VIEWS
from tests.workload import Workload, ledger, wait_until

pytestmark = pytest.mark.slow

STALE_AFTER_S = 6.0


def _owned_by_views_1(settings, views, names: list[str]) -> str:
    owned = http.get_json(f"{views.url('1')}/health", key=views.key)["ledger_partitions"]
    return next(n for n in names if partition_for(n, settings.partitions) in owned)


def _read_while_cut(settings, hosts, host_pools, views_env=None) -> tuple:
    """Cut views 1 from the brokers, move money of an account it owns, read it there with
    the ledger's new seq as min_seq. Returns (that answer, the seq, the ledger's balance,
    an answer's header once stale or None, the views pool, the account)."""
    host_pools(settings, "worker", ENGINES[:1])
    views = host_pools(settings, "views", VIEWS,
                       {"BANK_VIEWS_STALE_AFTER_S": str(STALE_AFTER_S), **(views_env or {})})
    names = [f"acct-{i}" for i in range(8)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 1_000)
        account = _owned_by_views_1(settings, views, names)
        for broker in BROKERS:
            hosts.cut(VIEWS[1], broker)
        cut_at = time.monotonic()
        for i, other in enumerate(n for n in names if n != account):
            wl.send({"type": "transfer", "request_id": f"cut-{i}", "from": account, "to": other,
                     "amount": 10})
        wl.sender.flush()
        assert wl.wait(60), "the transfers were decided while views 1 was cut"
    finally:
        wl.close()
    truth = ledger(settings).accounts[account]
    url = f"{views.url('1')}/accounts/{account}"
    answer = http.request("GET", f"{url}?min_seq={truth.seq}&timeout=2")
    stale: list[str] = []

    def says_stale() -> bool:
        header = http.request("GET", url).headers.get(BROKERS_UNREACHABLE_HEADER.lower())
        stale.extend([header] if header else [])
        return bool(stale)
    try:
        wait_until(says_stale, max(1.0, cut_at + STALE_AFTER_S + 8 - time.monotonic()),
                   "an answer saying the brokers are silent", poll_s=1)
    except AssertionError:
        pass   # the negative control never says it; the caller checks
    return answer, truth.seq, truth.balance, stale[0] if stale else None, views, account


def test_a_views_worker_cut_from_the_brokers_refuses_a_min_seq_it_has_not_folded(
        host_settings, healed, host_pools):
    answer, seq, balance, stale, views, account = _read_while_cut(host_settings, healed, host_pools)
    assert answer.status == 503 and answer.json()["error"] == "behind", (answer.status, answer.body)
    assert stale is not None and int(stale) >= STALE_AFTER_S
    health = http.request("GET", f"{views.url('1')}/health").json()
    assert health["status"] == "degraded" and health["brokers_unreachable_for_s"] > STALE_AFTER_S, health
    healed.heal()
    caught_up = http.get_json(f"{views.url('1')}/accounts/{account}?min_seq={seq}&timeout=10",
                              timeout_s=120)
    assert caught_up["balance"] == balance and caught_up["seq"] >= seq
    wait_until(lambda: BROKERS_UNREACHABLE_HEADER.lower() not in
               http.request("GET", f"{views.url('1')}/health").headers, 30,
               "the worker to stop saying the brokers are silent")


def test_negative_control_a_views_worker_serving_after_isolation_answers_an_old_balance(
        host_settings, healed, host_pools):
    answer, seq, balance, stale, _, _ = _read_while_cut(
        host_settings, healed, host_pools, {"BANK_UNSAFE_VIEWS_SERVE_ISOLATED": "true"})
    assert answer.status == 200 and answer.json()["seq"] < seq, (answer.status, answer.body)
    assert answer.json()["balance"] != balance and stale is None
