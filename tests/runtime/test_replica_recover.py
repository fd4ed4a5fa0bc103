"""A replica re-forms its group after any failure to, until its deadline, and restarts a rank that stops answering
(stand-in ranks: no Ray cluster needed)."""

import asyncio

import pytest
from ray.exceptions import RayActorError

from runtime.engine.llm_engine import RequestOutput
from runtime.replica import replica as replica_module
from runtime.replica.errors import ReplicaDownError
from runtime.replica.rank import RankStatus
from runtime.replica.replica import Replica, ReplicaSpec
from runtime.sampling import SamplingParams
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


class StandInPlacement:
    async def ready(self):
        return True


def over_stand_ins(ranks: list[FakeRank], **spec) -> Replica:
    """A replica over stand-in ranks (no placement group, no rank actors), not started; a hung rank it restarts
    is restarted by its `restart` instead of `ray.kill`."""

    class OverStandIns(Replica):
        @staticmethod
        def _place_ranks(spec):
            return StandInPlacement(), ranks

    replica = OverStandIns(ReplicaSpec(model_path="unused", ep_size=len(ranks), **spec))
    replica._restart = lambda rank: rank.restart()
    return replica


def bare_replica(ranks: list[FakeRank], recover_timeout_s: float) -> Replica:
    """As after its first group failed: down, at generation 1."""
    replica = over_stand_ins(ranks, recover_timeout_s=recover_timeout_s)
    replica.generation = 1
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


class SteppingRank(FakeRank):
    """A rank that finishes every request in one step with one token. On the first call to a method in `hang_at` it
    gets stuck: that call and every later one wait until `restart` (a killed rank), then fail with RayActorError;
    a method in `fail_at` fails once at once (a rank that died)."""

    def __init__(self, hang_at: tuple[str, ...] = (), fail_at: tuple[str, ...] = ()):
        super().__init__([])
        self.hang_at, self.fail_at, self.requests, self.restarts = set(hang_at), set(fail_at), [], 0
        self._killed: asyncio.Event | None = None  # set while stuck

        async def ping():
            await self._serve("ping")
            return "info"

        async def connect(host, port):
            await self._serve("connect")
            self.requests = []  # a fresh engine
            self.connected.append((host, port))

        async def add_request(prompt, params, request_id):
            await self._serve("add_request")
            self.requests.append(request_id)

        async def step():
            await self._serve("step")
            done, self.requests = self.requests, []
            return [RequestOutput(rid, [7], "x", True, "length", 3, 0, 1) for rid in done]

        async def status():
            await self._serve("status")
            return RankStatus("stats", "load")

        self.ping, self.connect, self.status = Method(ping), Method(connect), Method(status)
        self.add_request, self.step, self.abort = Method(add_request), Method(step), Method(self.requests.remove)

    async def _serve(self, method: str) -> None:
        if method in self.fail_at:
            self.fail_at.discard(method)
            raise RayActorError()
        if method in self.hang_at:
            self.hang_at.discard(method)
            self._killed = asyncio.Event()
        if (killed := self._killed) is not None:
            await killed.wait()
            raise RayActorError()

    def restart(self) -> None:
        self.restarts += 1
        if self._killed is not None:
            self._killed.set()
            self._killed = None


async def started(ranks: list[SteppingRank], hang_timeout_s: float) -> Replica:
    replica = over_stand_ins(ranks, hang_timeout_s=hang_timeout_s)
    await replica.start()
    return replica


async def reformed(replica: Replica, generation: int) -> None:
    async with asyncio.timeout(30):
        while not (replica.up and replica.generation > generation):
            await asyncio.sleep(0.01)


ONE_TOKEN = SamplingParams(temperature=0.0, max_tokens=1)


@pytest.mark.anyio
@pytest.mark.parametrize(("rank", "method"), [(1, "step"), (0, "add_request")])
async def test_a_rank_that_stops_answering_is_restarted_and_the_group_reformed(rank, method):
    ranks = [SteppingRank(), SteppingRank()]
    replica = await started(ranks, hang_timeout_s=0.2)
    assert (await replica.generate([1, 2, 3], ONE_TOKEN)).token_ids == [7]
    ranks[rank].hang_at.add(method)
    with pytest.raises(ReplicaDownError, match=rf"RankHungError: rank\(s\) \[{rank}\] did not answer within 0.2 s"):
        async with asyncio.timeout(30):  # without the hang deadline: waits for good
            await replica.generate([1, 2, 3], ONE_TOKEN)
    await reformed(replica, generation=1)
    assert [r.restarts for r in ranks] == [int(i == rank) for i in range(2)]
    assert (await replica.generate([1, 2, 3], ONE_TOKEN)).token_ids == [7]
    assert replica.generation == 2 and not replica.pending


@pytest.mark.anyio
async def test_a_rank_stuck_after_its_peer_died_is_restarted_in_the_background():
    # rank 0 dies in a step, rank 1 stays stuck in it (a collective waiting on its peer): the replica fails at
    # once on the death, and rank 1, which recovery's calls would queue behind for good, is restarted at the deadline
    ranks = [SteppingRank(fail_at=("step",)), SteppingRank(hang_at=("step",))]
    replica = await started(ranks, hang_timeout_s=0.2)
    with pytest.raises(ReplicaDownError, match="RayActorError"):
        async with asyncio.timeout(30):
            await replica.generate([1, 2, 3], ONE_TOKEN)
    await reformed(replica, generation=1)
    assert [r.restarts for r in ranks] == [0, 1]
    assert (await replica.generate([1, 2, 3], ONE_TOKEN)).token_ids == [7]


@pytest.mark.anyio
async def test_a_rank_that_died_while_idle_fails_the_health_check_and_the_group_reforms():
    ranks = [SteppingRank(), SteppingRank(fail_at=("status",))]
    replica = await started(ranks, hang_timeout_s=30.0)
    health = await replica.health()
    assert (health.up, health.prefix_cache, health.load) == (False, None, None)
    await reformed(replica, generation=1)
    health = await replica.health()
    assert (health.prefix_cache, health.load) == ("stats", "load")  # rank 0's status
    assert (await replica.generate([1, 2, 3], ONE_TOKEN)).token_ids == [7]


@pytest.mark.anyio
async def test_health_checks_that_time_out_on_a_hung_idle_rank_share_one_probe_and_one_restart():
    ranks = [SteppingRank(hang_at=("status",)), SteppingRank()]
    replica = await started(ranks, hang_timeout_s=0.5)
    for _ in range(5):  # the router's checks, each given up after a while
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(replica.health(), 0.05)
    await reformed(replica, generation=1)
    assert [r.restarts for r in ranks] == [1, 0]
    assert (await replica.generate([1, 2, 3], ONE_TOKEN)).token_ids == [7]


class LongStepRank(SteppingRank):
    """A rank in a long step (a prefill chunk on a loaded CPU) until `release`: as a plain actor it serves one call
    at a time, so its status waits for the step to end."""

    def __init__(self):
        super().__init__()
        self.stepping, self.release, one_at_a_time = asyncio.Event(), asyncio.Event(), asyncio.Lock()
        step, status = self.step.run, self.status.run

        async def long_step():
            async with one_at_a_time:
                self.stepping.set()
                await self.release.wait()
                return await step()

        async def queued_status():
            async with one_at_a_time:
                return await status()

        self.step, self.status = Method(long_step), Method(queued_status)


@pytest.mark.anyio
async def test_a_replica_in_a_long_step_answers_its_health_check_without_waiting_for_the_step():
    # the router marked a loaded replica down after its rounds timed out behind such a step, and up after it
    ranks = [LongStepRank(), LongStepRank()]
    replica = await started(ranks, hang_timeout_s=60.0)  # the step itself is under this deadline, not the check
    assert (await replica.health()).load == "load"  # idle: asks its ranks
    request = asyncio.create_task(replica.generate([1, 2, 3], ONE_TOKEN))
    await asyncio.gather(*(rank.stepping.wait() for rank in ranks))
    async with asyncio.timeout(10):  # without the fix: until the step ends
        health = await replica.health()
    assert (health.up, health.in_flight, health.load) == (True, 1, "load")  # the load its ranks last gave
    for rank in ranks:
        rank.release.set()
    assert (await request).token_ids == [7]
    assert (await replica.health()).up and not replica.pending


@pytest.mark.anyio
async def test_a_replica_says_how_long_its_step_has_run_so_that_the_router_can_tell_a_hung_one(monkeypatch):
    # it answers "up" at once during a step (above), so a hung step was seen only at its hang deadline
    clock = [1000.0]
    monkeypatch.setattr(replica_module, "monotonic", lambda: clock[0])  # the replica's clock only, not the loop's
    ranks = [LongStepRank(), LongStepRank()]
    replica = await started(ranks, hang_timeout_s=600.0)
    assert (await replica.health()).step_s == 0.0  # idle
    request = asyncio.create_task(replica.generate([1, 2, 3], ONE_TOKEN))
    await asyncio.gather(*(rank.stepping.wait() for rank in ranks))
    clock[0] += 75
    async with asyncio.timeout(10):
        health = await replica.health()
    assert (health.up, health.in_flight, health.step_s) == (True, 1, 75.0)
    for rank in ranks:
        rank.release.set()
    assert (await request).token_ids == [7]
    assert (await replica.health()).step_s == 0.0  # between steps
