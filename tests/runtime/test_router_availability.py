"""What the runtime server's probes and metrics read from the router, with stand-in replicas (no Ray cluster): /ready
is 503 while no replica is up, /health only once none has been up for longer than a replica keeps trying to recover;
/metrics shows each replica's load as the last health round found it."""

import asyncio
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from ray.exceptions import ActorUnavailableError

from runtime.engine.llm_engine import EngineLoad, RequestOutput
from runtime.replica import router as router_module
from runtime.replica.errors import NoReplicaAvailableError, ReplicaDownError
from runtime.replica.replica import ReplicaHealth
from runtime.replica.router import Router, RouterConfig
from runtime.replica.serving import RouterFrontend
from runtime.sampling import SamplingParams
from runtime.server.metrics import MeteredEngine
from tests.runtime.replica_fixtures import Method

pytestmark = pytest.mark.anyio


class StandInReplica:
    def __init__(self, load: EngineLoad | None = None):
        self.up, self.load, self.step_s = True, load, 0.0

        async def health():
            return ReplicaHealth(self.up, in_flight=0, generation=1, aborted=0, prefix_cache=None, load=self.load,
                                 step_s=self.step_s)
        self.health = Method(health)


def frontend_of(router: Router, **kwargs) -> RouterFrontend:
    async def availability():
        return router.availability()
    handle = SimpleNamespace(availability=Method(availability))  # the router actor's handle, as the server has it
    return RouterFrontend(handle, tokenizer=None, max_model_len=0, **kwargs)


async def test_a_replica_down_makes_the_server_unready_and_only_a_replica_down_for_good_makes_it_dead(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: clock[0])
    replicas = [StandInReplica(), StandInReplica()]
    router = Router(replicas)
    frontend = frontend_of(router, dead_after_s=180)

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


async def test_metrics_show_each_replicas_queue_and_cache_and_forget_a_replica_that_went_down():
    replicas = [StandInReplica(EngineLoad(running=3, waiting=1, kv_cache_usage=0.25)),
                StandInReplica(EngineLoad(running=0, waiting=0, kv_cache_usage=0.0))]
    router = Router(replicas)
    router.in_flight[0] = 4  # requests this router has out at replica 0
    metered = MeteredEngine(frontend_of(router), "m")

    async def scrape() -> dict[str, float]:
        await metered.refresh()
        text = generate_latest(metered.registry).decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    await router.check_health()
    shown = await scrape()
    assert shown['heavy_runtime_num_requests_running{model_name="m",replica="0"}'] == 3
    assert shown['heavy_runtime_num_requests_waiting{model_name="m",replica="0"}'] == 1
    assert shown['heavy_runtime_kv_cache_usage_ratio{model_name="m",replica="0"}'] == 0.25
    assert shown['heavy_runtime_num_requests_running{model_name="m",replica="1"}'] == 0
    assert shown['heavy_runtime_replica_requests_in_flight{model_name="m",replica="0"}'] == 4
    assert shown['heavy_runtime_replicas{model_name="m"}'] == shown['heavy_runtime_replicas_up{model_name="m"}'] == 2

    assert shown['heavy_runtime_replica_stalled{model_name="m",replica="0"}'] == 0
    replicas[0].step_s = router.config.stall_after_s  # its step hangs: up, stalled
    await router.check_health()
    shown = await scrape()
    assert shown['heavy_runtime_replica_stalled{model_name="m",replica="0"}'] == 1
    assert shown['heavy_runtime_replica_up{model_name="m",replica="0"}'] == 1

    replicas[0].step_s = 0
    replicas[1].up = False
    await router.check_health()
    shown = await scrape()
    assert shown['heavy_runtime_replica_up{model_name="m",replica="1"}'] == 0
    assert shown['heavy_runtime_replica_stalled{model_name="m",replica="0"}'] == 0
    assert shown['heavy_runtime_replicas_up{model_name="m"}'] == 1
    assert 'heavy_runtime_num_requests_running{model_name="m",replica="1"}' not in shown  # no stale load
    assert shown['heavy_runtime_num_requests_running{model_name="m",replica="0"}'] == 3


async def test_a_replica_is_down_after_unanswered_rounds_in_a_row_and_at_once_when_it_says_so():
    """Its ranks answer between two steps: a step longer than a round is no outage. Three rounds unanswered are."""
    replica = StandInReplica()
    slow = False

    async def health():
        if slow:
            await asyncio.sleep(1)
        return ReplicaHealth(replica.up, in_flight=0, generation=1, aborted=0, prefix_cache=None, load=None)
    replica.health = Method(health)
    router = Router([replica], RouterConfig(health_timeout_s=0.05, unanswered_rounds=3))
    slow = True
    for _ in range(2):
        await router.check_health()
        assert router.up == [True]  # one long step, or two: still up
    slow = False
    await router.check_health()
    assert router.up == [True] and router.unanswered == [0]
    slow = True
    for _ in range(3):
        await router.check_health()
    assert router.up == [False]
    slow, replica.up = False, True
    await router.check_health()
    assert router.up == [True]
    replica.up = False  # a replica that answers "down" (a rank died, the group re-forms) is down at once
    await router.check_health()
    assert router.up == [False]


async def test_a_stopped_router_asks_no_replica_any_more():
    """shutdown() stops the rounds first: the replicas' end is no outage to report."""
    replica = StandInReplica()
    asked = 0

    async def health():
        nonlocal asked
        asked += 1
        return ReplicaHealth(True, in_flight=0, generation=1, aborted=0, prefix_cache=None, load=None)
    replica.health = Method(health)
    router = Router([replica], RouterConfig(health_interval_s=0.01))
    await router.start()
    await asyncio.sleep(0.1)
    await router.stop()
    await asyncio.sleep(0)
    before = asked
    await asyncio.sleep(0.1)
    assert before > 1 and asked == before


async def test_a_health_answer_given_before_a_request_failed_there_does_not_mark_the_replica_up_again(monkeypatch):
    """A round waits for its slowest replica (up to health_timeout_s): a faster one's answer may be older than a
    request that failed there meanwhile, which marked it down."""
    monkeypatch.setattr(router_module.ray, "cancel", lambda *args, **kwargs: None)  # stand-in streams, no refs
    failing, slow = StandInReplica(), StandInReplica()
    answered, release = asyncio.Event(), asyncio.Event()

    async def slow_health():
        answered.set()  # the other replica has answered "up" by now
        await release.wait()
        return ReplicaHealth(True, in_flight=0, generation=1, aborted=0, prefix_cache=None, load=None)
    slow.health = Method(slow_health)

    async def fails(*args):
        raise ReplicaDownError("a rank died")
        yield  # an async generator, as a replica's stream is

    async def empty(*args):
        return
        yield
    failing.generate_stream, slow.generate_stream = Method(fails), Method(empty)
    router = Router([failing, slow])
    round_ = asyncio.create_task(router.check_health())
    await answered.wait()
    assert [out async for out in router.generate_stream([1, 2], SamplingParams())] == []  # served by the other one
    assert router.up == [False, True]
    release.set()
    await round_
    assert router.up == [False, True]  # until a round that began after the failure finds it up
    await router.check_health()
    assert router.up == [True, True]


def never_answering(replica: StandInReplica) -> StandInReplica:
    """Its health answers come too late for any round (Ray or the CPU slow to serve them)."""
    async def health():
        await asyncio.Event().wait()
    replica.health = Method(health)
    return replica


async def test_a_replica_whose_requests_make_progress_is_up_though_its_health_rounds_go_unanswered(monkeypatch):
    monkeypatch.setattr(router_module.ray, "cancel", lambda *args, **kwargs: None)  # stand-in streams, no refs
    replica = never_answering(StandInReplica())

    async def tokens(*args):
        while True:
            yield asyncio.sleep(0, RequestOutput("r", [7], "x", False, None, 2, 0, 1))  # what awaiting a ref gives
    replica.generate_stream = Method(tokens)
    router = Router([replica], RouterConfig(health_timeout_s=0.01, unanswered_rounds=2))
    deltas = router.generate_stream([1, 2], SamplingParams())
    for _ in range(4):
        await anext(deltas)  # a token since the last round
        await router.check_health()
        assert router.up == [True]
    for _ in range(2):  # no answer and no token: late
        await router.check_health()
    assert router.up == [False]
    await anext(deltas)
    await router.check_health()
    assert router.up == [True]
    await deltas.aclose()


async def test_a_replica_is_sent_requests_while_its_rounds_are_late_when_none_is_up_but_not_once_it_says_down():
    """With one replica, a late health round (a loaded machine) refused every request: NoReplicaAvailableError."""
    late, other = never_answering(StandInReplica()), StandInReplica()
    router = Router([late, other], RouterConfig(health_timeout_s=0.01, unanswered_rounds=1))
    await router.check_health()
    assert router.up == [False, True] and router.choose(None) == 1  # an up one is preferred
    other.up = False
    await router.check_health()
    assert router.up == [False, False]
    assert router.choose(None) == 0  # late is not down: tried (its own refusal is retriable)
    assert await frontend_of(router).unavailable() is None  # nor is the server taken out of rotation
    with pytest.raises(NoReplicaAvailableError):
        router.choose(None, exclude=frozenset({0}))  # tried already
    only = Router([other], RouterConfig(health_timeout_s=0.01))
    await only.check_health()
    with pytest.raises(NoReplicaAvailableError):
        only.choose(None)  # it answered "down"
    assert (await frontend_of(only).unavailable()).startswith("no replica is up (of 1)")


async def test_a_replica_ray_cannot_reach_for_now_is_late_after_the_rounds_not_down_at_once():
    """ActorUnavailableError is Ray's "may be available later" (a connection lost, not the actor): as a late answer."""
    replica, unavailable = StandInReplica(), True

    async def health():
        if unavailable:
            raise ActorUnavailableError("connection reset", None)
        return ReplicaHealth(True, in_flight=0, generation=1, aborted=0, prefix_cache=None, load=None)
    replica.health = Method(health)
    router = Router([replica], RouterConfig(unanswered_rounds=2))
    await router.check_health()
    assert router.up == [True]
    await router.check_health()
    assert (router.up, router.late) == ([False], [True])
    unavailable = False
    await router.check_health()
    assert router.up == [True]


async def test_a_replica_whose_step_runs_past_the_stall_bound_gets_no_new_request_while_another_is_up(monkeypatch):
    """Its health answer comes at once during a step, so a hung step kept it up, and a job's key on it, until the
    step's hang deadline (300 s) failed its requests."""
    monkeypatch.setattr(router_module.ray, "cancel", lambda *args, **kwargs: None)  # stand-in streams, no refs
    stuck, other = StandInReplica(), StandInReplica()
    router = Router([stuck, other], RouterConfig(stall_after_s=60))
    await router.check_health()
    assert router.choose("job-1") == 0 and router.choose("job-2") == 0  # least loaded: the first
    router.in_flight[1] = 5
    stuck.step_s = 59  # a long step: nothing changes
    await router.check_health()
    assert router.choose("job-1") == 0 and router.choose("job-3") == 0
    stuck.step_s = 61
    await router.check_health()
    assert router.up == [True, True] and router.stalled == [True, False]
    assert router.choose("job-1") == 1 and router.affinity["job-1"] == 1  # its key moved, though 1 is busier
    router.groups["n-choices"] = (0, 2)  # an HTTP request's choices in flight there
    assert router.choose(None) == 1 and router.choose(None, group="n-choices") == 1
    assert await frontend_of(router).unavailable() is None
    assert router.choose(None, exclude=frozenset({1})) == 0  # the other tried already: the stalled one is still up
    stuck.step_s = 0
    await router.check_health()
    assert router.stalled == [False, False]
    assert router.choose("job-2") == 0 and router.choose("job-5") == 0  # back: a key left there stays, least load

    only = Router([stuck], RouterConfig(stall_after_s=60))
    stuck.step_s = 120
    await only.check_health()
    assert only.stalled == [True] and only.choose("job-1") == 0  # alone: nothing is refused

    async def token(*args):
        yield asyncio.sleep(0, RequestOutput("r", [7], "x", True, "length", 2, 0, 1))  # what awaiting a ref gives
    stuck.generate_stream = Method(token)
    assert len([out async for out in only.generate_stream([1, 2], SamplingParams())]) == 1
    await only.check_health()  # a token since the last round: the step its answer saw has ended
    assert only.stalled == [False]
