"""A client's acknowledgement lost after the brokers took its requests: every broker's
packets to the client are dropped (one way), so each request reaches its leader and is
written, while the client hears nothing and its sends time out. When the network heals the
client sends them again with the same request ids, as any client of an unacknowledged
write must. The log holds each request twice; the engine applies each once (its id
window), and verify finds nothing applied twice.

The negative control, a second deployment whose engine has no id window
(BANK_UNSAFE_NO_DEDUPE), goes through the same cut beside it: its retries are applied as
new transfers.
"""
from __future__ import annotations

import pytest

from kbank.chaos.hosts import CLIENT
from kbank.replay.verify import verify
from kbank.streams import topics
from kbank.streams.client import RequestSender, read_topic
from tests.hosts.conftest import BROKERS, ENGINES, two_deployments
from tests.workload import Workload, assert_invariants

pytestmark = pytest.mark.slow

RETRIED = 20
NAMES = [f"acct-{i}" for i in range(4)]


def _client(settings) -> Workload:
    wl = Workload(settings)
    # a client that gives up on an answer after 8 s (librdkafka's default is 5 minutes)
    wl.sender = RequestSender(settings, **{"message.timeout.ms": 8000, "request.timeout.ms": 4000})
    wl.open_accounts(NAMES, 1_000)
    return wl


def _copies_in_log(settings) -> int:
    return sum(b'"unacked-' in msg.value()
               for msg in read_topic(settings, settings.topic(topics.REQUESTS)))


def test_a_request_whose_acknowledgement_was_lost_is_applied_once_when_retried(
        host_cluster, healed, host_pools, tmp_path):
    protected, unprotected = two_deployments(host_cluster, tmp_path)
    engine = host_pools(protected, "worker", ENGINES[:1], label="protected")
    host_pools(unprotected, "worker", ENGINES[:1], {"BANK_UNSAFE_NO_DEDUPE": "true"},
               label="unprotected")
    clients = [_client(protected), _client(unprotected)]
    try:
        for broker in BROKERS:
            healed.cut_one_way(broker, CLIENT)
        for wl in clients:
            for i in range(RETRIED):
                wl.send({"type": "transfer", "request_id": f"unacked-{i}", "from": NAMES[i % 4],
                         "to": NAMES[(i + 1) % 4], "amount": 7})
        for wl in clients:
            wl.sender.producer.flush(30)
            assert len(wl.refused) == RETRIED, f"{len(wl.refused)} of {RETRIED} sends timed out"
        healed.heal()
        for wl in clients:
            wl.resend_refused()
            assert wl.wait(120), "every request was decided"
        for settings in (protected, unprotected):
            assert _copies_in_log(settings) == 2 * RETRIED, "the brokers took the first sends"
        report = assert_invariants(protected, clients[0], drained_by=engine)
        assert report.applied_twice == 0
        # the negative control: without the id window the retries are applied again
        control = verify(unprotected, require_final=False)
        assert control.applied_twice > 0 or control.violations, control.render()
    finally:
        for wl in clients:
            wl.close()
