"""The pure parts of the hosts' tooling, without root: the nftables rules a cut makes and
the chaos report's measure of how long a fault stopped progress."""
from __future__ import annotations

from kbank.chaos.hosts import CLIENT, Cut, Hosts, _ruleset
from kbank.chaos.network import Progress


class _Message:
    def __init__(self, partition: int, ts_ms: int) -> None:
        self._partition, self._ts = partition, ts_ms

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


def test_a_cut_drops_where_it_leaves_and_one_from_the_client_where_it_arrives():
    hosts = Hosts(["broker-1", "engine-0"])
    rules = _ruleset(hosts, "broker-1", [Cut("broker-1", "engine-0"), Cut("broker-1", CLIENT, 10)],
                     [Cut(CLIENT, "broker-1"), Cut("engine-0", "broker-1")])
    outgoing, incoming = rules.split("chain incoming")
    assert "ip daddr 10.77.0.11 drop" in outgoing
    assert "ip daddr 10.77.0.1 numgen random mod 100 < 10 drop" in outgoing
    # engine-0's packets are dropped on engine-0's side; the client has no rules of its own
    assert "ip saddr 10.77.0.1 drop" in incoming and "10.77.0.11" not in incoming
    assert rules.startswith("table inet bank_faults\ndelete table inet bank_faults\n")


def test_the_longest_gap_is_that_of_the_partition_that_waited_longest():
    progress = Progress()
    progress.fold([_Message(0, t) for t in (1_000, 2_000, 3_000, 9_000)]
                  + [_Message(1, t) for t in range(1_000, 10_000, 500)])
    assert progress.longest_gap(1.0, 10.0) == 6.0     # partition 0: 3 s to 9 s
    assert progress.longest_gap(4.0, 5.0) == 1.0      # nothing at all in the window
    seconds, counts = progress.per_second()
    assert seconds[0] == 1 and sum(counts) == 4 + 18
