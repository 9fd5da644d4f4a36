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


def test_the_super_users_password_is_on_no_command_line_and_the_directories_are_private(
        tmp_path, monkeypatch):
    """Issue 41: formatting the storage put the password in /proc/<pid>/cmdline, and the
    logs and node directories were world-readable."""
    import subprocess

    import kbank.streams.broker as broker
    from kbank.streams.broker import KafkaCluster

    argvs: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def run(cmd, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        argvs.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    class Popen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, cmd, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            argvs.append(list(cmd))
            super().__init__(cmd, *args, **kwargs)
    monkeypatch.setattr(broker.subprocess, "run", run)
    monkeypatch.setattr(broker.subprocess, "Popen", Popen)
    cluster = KafkaCluster(tmp_path / "kafka", secured=True).start()
    try:
        password = cluster.admin_password
        assert password and argvs
        assert not [a for a in argvs if any(password in part for part in a)], "on a command line"
        for path in (cluster.data_dir, cluster.data_dir / "logs", cluster.nodes[0].data_dir):
            assert path.stat().st_mode & 0o077 == 0, path
        assert not list(cluster.nodes[0].data_dir.glob("*.args"))   # the argfile is gone
    finally:
        cluster.stop()
