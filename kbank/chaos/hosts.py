"""Hosts on one machine: network namespaces joined by a bridge, and the faults between them.

Each host is a network namespace of its own (`ip netns`), with one veth into a switch
namespace that holds the bridge; the machine itself (where the tests and `bank chaos
--hosts` run, the client) joins the bridge through one more veth, the only interface made
outside the namespaces. Every address is in SUBNET; everything is made by `create` and
removed by `remove`, also what an earlier run that was killed left behind (same prefix).

Faults are nftables rules inside a host's own namespace (never the machine's): a cut drops
what the host sends to, and receives from, another host; a one-way cut only one direction; a
share drops a random fraction (`numgen random`). TCP connections stay up through a cut, as
they do when a switch or a firewall drops packets: a client learns of it from its own
timeouts. Delays need Toxiproxy (kbank.chaos.toxics).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from kbank.streams.broker import Host

SUBNET = "10.77.0"        # a /24 of addresses that only these namespaces and the uplink use
CLIENT = "client"         # the machine itself, on the uplink
NFT_TABLE = "bank_faults"


class HostsUnavailable(RuntimeError):
    """This machine cannot make hosts (not root, or iproute2 or nftables missing)."""


def why_unavailable() -> str | None:
    """One line saying why hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or in CI)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install {package})"
    return None


def _run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise HostsUnavailable(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass(frozen=True)
class Cut:
    """Packets from `source` to `target` dropped (all of them, or `percent` at random)."""

    source: str
    target: str
    percent: int = 100


@dataclass
class Hosts:
    """Named hosts, each a network namespace `<prefix>-<name>` with one address."""

    names: list[str]
    prefix: str = "kb"
    cuts: list[Cut] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names) or CLIENT in self.names:
            raise ValueError(f"host names must be distinct and not {CLIENT!r}: {self.names}")
        if len(self.names) > 200:
            raise ValueError("at most 200 hosts in one /24")
        self._address = {CLIENT: f"{SUBNET}.1",
                         **{name: f"{SUBNET}.{10 + i}" for i, name in enumerate(self.names)}}

    # -- where things are ----------------------------------------------------------------
    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def address(self, name: str) -> str:
        return self._address[name]

    def launcher(self, name: str) -> tuple[str, ...]:
        """The command prefix that runs a program on host `name`."""
        return ("ip", "netns", "exec", self.namespace(name))

    def host(self, name: str) -> Host:
        return Host(self.address(name), self.launcher(name))

    # -- making and removing -------------------------------------------------------------
    def create(self) -> "Hosts":
        """Make the switch, the uplink and every host; remove what a killed run left first."""
        reason = why_unavailable()
        if reason:
            raise HostsUnavailable(reason)
        self.remove()
        try:
            self._make()
        except HostsUnavailable:
            self.remove()
            raise
        return self

    def _make(self) -> None:
        switch, uplink = self.namespace("switch"), f"{self.prefix}-uplink"
        _run("ip", "netns", "add", switch)
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        _run("ip", "link", "add", uplink, "type", "veth", "peer", "name", "up0", "netns", switch)
        _run("ip", "-n", switch, "link", "set", "up0", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.address(CLIENT)}/24", "dev", uplink)
        _run("ip", "link", "set", uplink, "up")
        for i, name in enumerate(self.names):
            namespace, port = self.namespace(name), f"p{i}"
            _run("ip", "netns", "add", namespace)
            _run("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                 "netns", namespace)
            _run("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", namespace, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _run("ip", "-n", namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
        if self.names:   # a kernel without nf_tables cannot cut: say so now, not mid-test
            try:
                self._apply({self.names[0]})
            except HostsUnavailable as exc:
                raise HostsUnavailable(f"nftables does not work in a namespace here: {exc}") from None

    def remove(self) -> None:
        """Delete the namespaces (their veths go with them) and the uplink."""
        listed = _run("ip", "netns", "list", check=False).stdout.split()
        for namespace in listed:
            if namespace.startswith(f"{self.prefix}-"):
                _run("ip", "netns", "del", namespace, check=False)
        _run("ip", "link", "del", f"{self.prefix}-uplink", check=False)
        self.cuts = []

    # -- faults --------------------------------------------------------------------------
    def cut(self, a: str, b: str, percent: int = 100) -> None:
        """Drop what a and b send each other (a `percent` share of it, chosen at random)."""
        self.cut_one_way(a, b, percent)
        self.cut_one_way(b, a, percent)

    def cut_one_way(self, source: str, target: str, percent: int = 100) -> None:
        """Drop what `source` sends `target`; the other direction still passes."""
        if not 0 < percent <= 100:
            raise ValueError(f"a share of 1 to 100 percent, not {percent}")
        self.cuts.append(Cut(source, target, percent))
        self._apply({source, target})

    def isolate(self, name: str) -> None:
        """Cut `name` from every other host and from the client."""
        for other in [CLIENT, *self.names]:
            if other != name:
                self.cut(name, other)

    def heal(self) -> None:
        """Remove every cut."""
        touched = {h for c in self.cuts for h in (c.source, c.target)}
        self.cuts = []
        self._apply(touched)

    def _apply(self, touched: set[str]) -> None:
        """Write each touched host's whole table of drops again (one nft transaction)."""
        for host in touched - {CLIENT}:
            rules_out = [c for c in self.cuts if c.source == host]
            rules_in = [c for c in self.cuts if c.target == host]
            _run("ip", "netns", "exec", self.namespace(host), "nft", "-f", "-",
                 stdin=_ruleset(self, host, rules_out, rules_in))


def _drop(match: str, percent: int) -> str:
    share = "" if percent == 100 else f" numgen random mod 100 < {percent}"
    return f"    {match}{share} drop\n"


def _ruleset(hosts: Hosts, host: str, outgoing: list[Cut], incoming: list[Cut]) -> str:
    """The host's table: drop what it sends on an outgoing cut (filtered where it leaves)
    and what arrives on an incoming one (filtered where it arrives). A cut between two
    namespace hosts is filtered once, on its sender's side; one from the client, which has
    no rules of its own, on the receiver's side."""
    outs = "".join(_drop(f"ip daddr {hosts.address(c.target)}", c.percent) for c in outgoing)
    ins = "".join(_drop(f"ip saddr {hosts.address(c.source)}", c.percent)
                  for c in incoming if c.source == CLIENT)
    return (f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
            f"table inet {NFT_TABLE} {{\n"
            f"  chain outgoing {{\n    type filter hook output priority 0; policy accept;\n{outs}  }}\n"
            f"  chain incoming {{\n    type filter hook input priority 0; policy accept;\n{ins}  }}\n"
            "}\n")
