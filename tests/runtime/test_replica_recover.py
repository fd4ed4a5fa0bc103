"""A replica re-forms its group after any failure to, until its deadline (fake ranks: no Ray cluster needed)."""

import asyncio

import pytest
from ray.exceptions import RayActorError

from runtime.replica.replica import Replica, ReplicaSpec
from tests.runtime.replica_fixtures import Method


class FakeRank:
    def __init__(self, failures: list[BaseException]):
        self.failures, self.connected = failures, []

        async def ping():
            return "info"

        async def free_port(host):
            return 29500

        async def connect(host, port):
            if self.failures:
                raise self.failures.pop(0)
            self.connected.append((host, port))

        self.ping, self.free_port, self.connect = Method(ping), Method(free_port), Method(connect)


def bare_replica(ranks: list[FakeRank], recover_timeout_s: float) -> Replica:
    replica = Replica.__new__(Replica)  # no placement group, no rank actors
    replica.spec = ReplicaSpec(model_path="unused", ep_size=len(ranks), recover_timeout_s=recover_timeout_s)
    replica.ranks, replica.up, replica.generation, replica._wake = ranks, False, 1, asyncio.Event()
    return replica


@pytest.mark.anyio
async def test_recovery_retries_a_failed_rendezvous_not_only_a_restarting_rank():
    # a restarting rank (RayActorError), then a port taken before the group bound it (RuntimeError): seen once in
    # CI, a replica that never came back (the cause unconfirmed; before, any error but RayActorError ended recovery)
    ranks = [FakeRank([RayActorError(), RuntimeError("address already in use")]), FakeRank([])]
    replica = bare_replica(ranks, recover_timeout_s=30.0)
    await replica._recover()
    assert replica.up and replica.generation == 2 and replica._wake.is_set()
    assert ranks[0].connected == [("127.0.0.1", 29500)]


@pytest.mark.anyio
async def test_recovery_gives_up_at_its_deadline():
    ranks = [FakeRank([RuntimeError("address already in use")] * 100)]
    replica = bare_replica(ranks, recover_timeout_s=1.0)
    await replica._recover()
    assert not replica.up and replica.generation == 1
