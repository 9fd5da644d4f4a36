"""A client's acknowledgement lost after the brokers took its requests: every broker's
packets to the client are dropped (one way), so each request reaches its leader and is
written, while the client hears nothing and its sends time out. When the network heals the
client sends them again with the same request ids, as any client of an unacknowledged
write must. The log holds each request twice; the engine applies each once (its id
window), and verify finds nothing applied twice.

The negative control runs the engine without its id window (BANK_UNSAFE_NO_DEDUPE): the
retries are applied as new transfers.
"""
from __future__ import annotations

import pytest

from kbank.replay.verify import verify
from kbank.streams import topics
from kbank.streams.client import RequestSender, read_topic
from kbank.chaos.hosts import CLIENT
from tests.hosts.conftest import BROKERS, ENGINES
from tests.workload import Workload, assert_invariants

pytestmark = pytest.mark.slow

RETRIED = 20


def _send_unacknowledged_then_retry(settings, hosts, host_pools, env=None) -> Workload:
    engine = host_pools(settings, "worker", ENGINES[:1], env)
    wl = Workload(settings)
    # a client that gives up on an answer after 8 s (librdkafka's default is 5 minutes)
    wl.sender = RequestSender(settings, **{"message.timeout.ms": 8000, "request.timeout.ms": 4000})
    names = [f"acct-{i}" for i in range(4)]
    wl.open_accounts(names, 1_000)
    for broker in BROKERS:
        hosts.cut_one_way(broker, CLIENT)
    for i in range(RETRIED):
        wl.send({"type": "transfer", "request_id": f"unacked-{i}", "from": names[i % 4],
                 "to": names[(i + 1) % 4], "amount": 7})
    wl.sender.producer.flush(30)
    assert len(wl.refused) == RETRIED, f"{len(wl.refused)} of {RETRIED} sends timed out"
    hosts.heal()
    wl.resend_refused()
    assert wl.wait(120), "every request was decided"
    wl.engine = engine
    return wl


def _copies_in_log(settings) -> int:
    return sum(b'"unacked-' in msg.value()
               for msg in read_topic(settings, settings.topic(topics.REQUESTS)))


def test_a_request_whose_acknowledgement_was_lost_is_applied_once_when_retried(
        host_settings, healed, host_pools):
    wl = _send_unacknowledged_then_retry(host_settings, healed, host_pools)
    try:
        assert _copies_in_log(host_settings) == 2 * RETRIED, "the brokers took the first sends"
        report = assert_invariants(host_settings, wl, drained_by=wl.engine)
        assert report.applied_twice == 0
    finally:
        wl.close()


def test_negative_control_without_the_id_window_the_retries_are_applied_again(
        host_settings, healed, host_pools):
    wl = _send_unacknowledged_then_retry(host_settings, healed, host_pools,
                                         {"BANK_UNSAFE_NO_DEDUPE": "true"})
    try:
        assert _copies_in_log(host_settings) == 2 * RETRIED
        report = verify(host_settings, require_final=False)
        assert report.applied_twice > 0 or report.violations, report.render()
    finally:
        wl.close()
