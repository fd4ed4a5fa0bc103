"""What the runtime server's probes read from the router, with stand-in replicas (no Ray cluster): /ready is 503
while no replica is up, /health only once none has been up for longer than a replica keeps trying to recover."""

from types import SimpleNamespace

import pytest

from runtime.replica import router as router_module
from runtime.replica.replica import ReplicaHealth
from runtime.replica.router import Router
from runtime.replica.serving import RouterFrontend
from tests.runtime.replica_fixtures import Method

pytestmark = pytest.mark.anyio


class StandInReplica:
    def __init__(self):
        self.up = True

        async def health():
            return ReplicaHealth(self.up, in_flight=0, generation=1, aborted=0, prefix_cache=None)
        self.health = Method(health)


async def test_a_replica_down_makes_the_server_unready_and_only_a_replica_down_for_good_makes_it_dead(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: clock[0])
    replicas = [StandInReplica(), StandInReplica()]
    router = Router(replicas)

    async def availability():
        return router.availability()
    handle = SimpleNamespace(availability=Method(availability))  # the router actor's handle, as the server has it
    frontend = RouterFrontend(handle, tokenizer=None, max_model_len=0, dead_after_s=180)

    await router.check_health()
    assert await frontend.unavailable() is None and await frontend.dead() is None
    replicas[0].up = False
    clock[0] += 10
    await router.check_health()
    assert router.availability().down_for_s == (10.0, 0.0)  # since it was last seen up
    assert await frontend.unavailable() is None  # the other one serves

    replicas[1].up = False
    clock[0] += 100
    await router.check_health()
    assert router.availability().down_for_s == (110.0, 100.0)
    assert (await frontend.unavailable()).startswith("no replica is up (of 2)")
    assert await frontend.dead() is None  # still within a recovery: a restart would not help

    clock[0] += 81
    await router.check_health()
    assert (await frontend.dead()).startswith("no replica has been up for 181 s (of 2)")
    assert await frontend.unavailable() == await frontend.dead()

    replicas[1].up = True
    await router.check_health()
    assert await frontend.dead() is None and await frontend.unavailable() is None
