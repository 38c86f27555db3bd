"""Makes the router slower without touching its code, to show that the SLA run
catches it: on PYTHONPATH, every router process (Granian's workers included)
waits BENCH_ROUTER_DELAY_MS inside each request, within the time the router
reports as its own (X-Model-Router-Overhead-Ms). Behind the door
(MODEL_ROUTER_DOOR=on) the door serves no call itself, so each is slowed."""

import asyncio
import os

from model_router.app import App
from model_router.door_calls import DoorCalls

_delay = float(os.environ.get("BENCH_ROUTER_DELAY_MS", "0")) / 1000
_respond = App.respond


async def _slow_respond(self, *args, **kwargs):
    await asyncio.sleep(_delay)
    return await _respond(self, *args, **kwargs)


def _withdrawn(self):
    self.door.withdraw()


App.respond = _slow_respond
DoorCalls.install = _withdrawn
