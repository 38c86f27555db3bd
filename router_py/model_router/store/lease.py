"""One worker of the whole deployment at a time: the store's lease, as the
background jobs that must not run twice (the active health prober, the
canary and experiment controller) take, renew and give it back."""

from __future__ import annotations

import uuid

from .base import Store, StoreUnavailable


class Lease:
    def __init__(self, store: Store, name: str, ttl_ms: int):
        self.store = store
        self.name = name
        self.ttl_ms = ttl_ms
        self.holder = uuid.uuid4().hex  # unique across pods (pids and addresses are not)

    async def hold(self) -> bool:
        """Take or renew it; True while we hold it (renew well within ttl_ms)."""
        return await self.store.hold_lease(self.name, self.holder, self.ttl_ms)

    async def release(self) -> None:
        """Give it back, so a successor need not wait for it to lapse."""
        try:
            await self.store.release_lease(self.name, self.holder)
        except StoreUnavailable:
            pass  # it lapses on its own
