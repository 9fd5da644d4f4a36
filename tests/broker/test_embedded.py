"""The embedded broker's own helpers, without starting a broker."""
from __future__ import annotations

import re

from kbank.streams.broker import _cluster_id


def test_cluster_ids_are_what_the_storage_tool_accepts():
    ids = {_cluster_id() for _ in range(5_000)}   # ~78 would start with "-" if not guarded
    assert len(ids) == 5_000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def test_a_node_dies_with_its_supervisor_and_a_held_data_dir_is_refused(tmp_path):
    # unsecured on purpose: the broker process's life is tested here, not who connects to it
    """`bank up` killed hard must not leave its JVM holding the port and the data directory;
    while a node still runs on a directory, another start there is refused, naming the pid."""
    import os
    import signal
    import subprocess
    import sys

    import pytest

    from kbank.streams.broker import BrokerError, KafkaCluster
    from tests.workload import wait_until

    data = tmp_path / "kafka"
    script = ("import sys, time\nfrom kbank.streams.broker import KafkaCluster\n"
              f"c = KafkaCluster({str(data)!r}).start()\n"
              "print(c.nodes[0].proc.pid, flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    try:
        jvm = int(parent.stdout.readline())
        with pytest.raises(BrokerError, match=f"still running as pid {jvm}"):
            KafkaCluster(data).start()
        parent.send_signal(signal.SIGKILL)           # no atexit, no stop(): only the kernel
        parent.wait(10)

        def gone() -> bool:
            try:
                os.kill(jvm, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(gone, 30, "the JVM to die with its parent")
    finally:
        parent.kill()
    again = KafkaCluster(data).start()      # the directory is free again
    again.stop()
