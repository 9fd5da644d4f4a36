"""Toxiproxy on a host: TCP proxies to the brokers whose traffic it delays.

Shopify's Toxiproxy (the Go module github.com/Shopify/toxiproxy/v2, built by `make hosts`
into .venv/bin/toxiproxy-server) runs on one host, its API on that host's address. Each
broker has a second listener that advertises the proxy to it (KafkaCluster's `via`), so a
client on that host which bootstraps through a proxy is told the proxies' addresses and
sends everything through them: a delay applies to all its traffic with the brokers, and
to no one else's.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import orjson

from kbank.chaos.hosts import Hosts

API_PORT = 8474
PROXY_PORT_BASE = 19090          # broker N's proxy listens on 127.0.0.1:(base + N)
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0"


def toxiproxy_binary() -> str | None:
    """toxiproxy-server beside this Python (the venv's bin), or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "toxiproxy-server")
    return beside if os.path.exists(beside) else shutil.which("toxiproxy-server")


def proxy_address(broker_number: int) -> str:
    """Where the proxy to broker N (1-based) listens, on the proxy's host."""
    return f"127.0.0.1:{PROXY_PORT_BASE + broker_number}"


class Toxiproxy:
    """A Toxiproxy server on host `host`, one proxy per broker."""

    def __init__(self, hosts: Hosts, host: str, log_path: str) -> None:
        self.hosts, self.host, self.log_path = hosts, host, log_path
        self.api = f"http://{hosts.address(host)}:{API_PORT}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, broker_addresses: list[str], upstream_port: int) -> "Toxiproxy":
        binary = toxiproxy_binary()
        if binary is None:
            raise FileNotFoundError(f"toxiproxy-server is missing (make hosts: go install "
                                    f"{TOXIPROXY_MODULE})")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.hosts.launcher(self.host), binary, "-host", self.hosts.address(self.host),
                 "-port", str(API_PORT)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call("GET", "/version")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"toxiproxy did not start; see {self.log_path}") from None
                time.sleep(0.1)
        for number, address in enumerate(broker_addresses, start=1):
            self._call("POST", "/proxies", {"name": f"broker-{number}", "enabled": True,
                                            "listen": proxy_address(number),
                                            "upstream": f"{address}:{upstream_port}"})
        return self

    def bootstrap_servers(self, brokers: int) -> str:
        return ",".join(proxy_address(n) for n in range(1, brokers + 1))

    def delay(self, milliseconds: int, stream: str = "downstream", jitter_ms: int = 0) -> None:
        """Every proxy holds what passes in `stream` (downstream: from the brokers) this long."""
        for proxy in self._call("GET", "/proxies"):
            self._call("POST", f"/proxies/{proxy}/toxics", {
                "name": f"latency-{stream}", "type": "latency", "stream": stream,
                "attributes": {"latency": milliseconds, "jitter": jitter_ms}})

    def clear(self) -> None:
        """Remove every toxic of every proxy."""
        for proxy in self._call("GET", "/proxies"):
            for toxic in self._call("GET", f"/proxies/{proxy}/toxics"):
                self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def _call(self, method: str, path: str, body: object = None):  # noqa: ANN202 - JSON
        data = None if body is None else orjson.dumps(body)
        req = urllib.request.Request(f"{self.api}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, kind = resp.read(), resp.headers.get("Content-Type", "")
        return orjson.loads(raw) if raw and "json" in kind else raw.decode()
