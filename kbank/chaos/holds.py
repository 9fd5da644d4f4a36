"""A mix of two-phase and linked transfers for load generators (`bank chaos`, the crash tests).

Each step makes a hold and may settle an earlier one: post it (whole or in
part), void it, send a post and a void of it at once (exactly one may win), or
leave it to expire; hold timeouts are short, so every hold ends one way or
another within seconds of the load stopping. One step in four also sends a
linked transfer to two or three receivers, one in five of which names an
account that does not exist (so none of its members may be applied).
"""
from __future__ import annotations

import random
from typing import Any


class HoldMix:
    """Requests for holds among `names`, each step's list to be sent in order."""

    def __init__(self, names: list[str], prefix: str, max_amount: int, rng: random.Random,
                 max_timeout_s: int = 6, open_holds: int = 8) -> None:
        self.names, self.prefix, self.max_amount, self.rng = names, prefix, max_amount, rng
        self.max_timeout_s, self.window = max_timeout_s, open_holds
        self.open: list[tuple[str, str, int]] = []   # (hold_id, sender, amount), not yet settled
        self.made = 0

    def step(self) -> list[dict[str, Any]]:
        rng = self.rng
        src, dst = rng.sample(self.names, 2)
        hold_id, amount = f"{self.prefix}-{self.made}", rng.randint(1, self.max_amount)
        self.made += 1
        requests = [{"type": "hold", "request_id": hold_id, "from": src, "to": dst,
                     "amount": amount, "timeout_s": rng.randint(1, self.max_timeout_s)}]
        self.open.append((hold_id, src, amount))
        if len(self.open) > self.window:
            requests += self._settle(*self.open.pop(rng.randrange(len(self.open))))
        if rng.random() < 0.25:
            receivers = rng.sample([n for n in self.names if n != src], rng.randint(2, 3))
            if rng.random() < 0.2:
                receivers[-1] = f"nobody-{self.made}"
            requests.append({"type": "linked", "request_id": f"{self.prefix}-linked-{self.made}",
                             "from": src, "transfers": [
                                 {"to": to, "amount": rng.randint(1, self.max_amount // 3 + 1)}
                                 for to in receivers]})
        return requests

    def _settle(self, hold_id: str, src: str, amount: int) -> list[dict[str, Any]]:
        rng = self.rng
        post = {"type": "post", "request_id": f"post-{hold_id}", "hold_id": hold_id, "from": src}
        if rng.random() < 0.5:
            post["amount"] = rng.randint(1, amount)
        void = {"type": "void", "request_id": f"void-{hold_id}", "hold_id": hold_id, "from": src}
        choice = rng.random()
        if choice < 0.35:
            return [post]
        if choice < 0.6:
            return [void]
        if choice < 0.85:
            return rng.sample([post, void], 2)
        return []   # left to expire
