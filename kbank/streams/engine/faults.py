"""Test seams: faults the guarantee tests inject into an engine worker.

Configured by the BANK_FAULT_* settings (all off by default); the worker
calls these at the named points of a batch and nothing else of the engine
knows about them. They exist only so that tests can prove the guarantees
rest on the mechanisms they claim to rest on.
"""
from __future__ import annotations

import logging
import os
import signal
import time

from kbank.streams.config import Settings
from kbank.streams.engine.transaction import CommitOutcomeUnknown

log = logging.getLogger("bank.engine")

class InjectedAbort(Exception):
    """Raised to abort a transaction after its outputs were produced."""


class InjectedUnknownCommit(CommitOutcomeUnknown):
    """Raised after a transaction committed, as if its commit had timed out."""


class EngineFaults:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._frozen_once = False
        self._commits = 0
        self._committed = 0

    def _freeze(self, point: str, batch_no: int) -> None:
        """Stop this process (SIGSTOP) once, at the configured point and batch."""
        s = self.settings
        if (point == s.fault_freeze_point and not self._frozen_once
                and 0 < s.fault_freeze_at_batch <= batch_no):
            self._frozen_once = True
            log.warning("injected freeze at %s of batch %d", point, batch_no)
            os.kill(os.getpid(), signal.SIGSTOP)

    def before_batch(self, batch_no: int) -> None:
        self._freeze("before-batch", batch_no)

    def mid_changelog(self, batch_no: int, flush) -> None:  # noqa: ANN001 - a callable
        """Between a batch's account states and its batch record: SIGKILL every Nth batch."""
        every = self.settings.fault_crash_every
        if every and batch_no % every == 0:
            flush()
            log.warning("injected crash mid-batch %d", batch_no)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    def before_commit(self, batch_no: int, flush) -> None:  # noqa: ANN001 - a callable
        if self.settings.fault_commit_delay_ms:
            time.sleep(self.settings.fault_commit_delay_ms / 1000)
        self._freeze("before-commit", batch_no)
        self._commits += 1
        every = self.settings.fault_abort_every
        if every and self._commits % every == 0:
            flush()   # the outputs reach the broker first: the abort must hide them, not purge them
            raise InjectedAbort(f"injected abort of batch {batch_no}")

    def after_commit(self, batch_no: int) -> None:
        """Every Nth committed batch: report its outcome as unknown (as a commit timeout does)."""
        self._committed += 1
        every = self.settings.fault_unknown_commit_every
        if every and self._committed % every == 0:
            raise InjectedUnknownCommit(f"injected unknown outcome of committed batch {batch_no}")


class PlantedBug:
    """BANK_FAULT_BUG_ON (testing): `requests:TEXT` or `credits:TEXT` makes the engine raise,
    as a bug would, deciding a record of that input whose value contains TEXT."""

    def __init__(self, spec: str) -> None:
        topic, _, text = spec.partition(":")
        self.topic_suffix = f"transfers.{topic}" if text else ""
        self.text = text.encode()

    def planted_bug(self, msg) -> None:  # noqa: ANN001 - a confluent_kafka Message
        if self.text and msg.topic().endswith(self.topic_suffix) and self.text in (msg.value() or b""):
            raise RuntimeError(f"a planted bug (BANK_FAULT_BUG_ON) at {msg.topic()}@{msg.offset()}")
