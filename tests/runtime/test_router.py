"""The router over two EP = 2 replicas of the tiny Kimi checkpoint: prefix affinity with prefix-cache reuse,
least-loaded choice, and a rank killed mid-generation (retried on the other replica; with one replica, a retriable
error; the replica comes back either way)."""

import asyncio
import time

import pytest

from runtime.replica.errors import NoReplicaAvailableError, RetriableError
from runtime.replica.replica import ReplicaActor
from runtime.replica.router import RouterActor, RouterConfig
from runtime.replica.serving import RouterFrontend
from runtime.sampling import SamplingParams
from tests.runtime.replica_fixtures import replica_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EP = 2
SHORT = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
LONG = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)  # long enough to be killed mid-way
SHARED_PREFIX = list(range(300, 324))  # 24 tokens = 6 full KV blocks of 4
HEALTH = RouterConfig(health_interval_s=0.5, health_timeout_s=5.0)
RECOVERY_DEADLINE_S = 150  # a restarted rank reloads its weights before the group re-forms
FAULT_DEADLINE_S = 90  # the failed request is answered (result or retriable error) within this


@pytest.fixture(scope="module")
def replicas(ray_cluster, tiny_kimi_path):
    handles = [ReplicaActor.options(num_cpus=0).remote(replica_spec(tiny_kimi_path, EP)) for _ in range(2)]
    ray_cluster.get([h.start.remote() for h in handles], timeout=300)
    yield handles
    for handle in handles:
        ray_cluster.kill(handle)


def _router(ray_cluster, handles):
    router = RouterActor.options(num_cpus=0).remote(handles, HEALTH)
    assert all(ray_cluster.get(router.start.remote(), timeout=30))
    return router


def _wait_until_up(ray_cluster, replica, generation: int) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while time.monotonic() < deadline:
        health = ray_cluster.get(replica.health.remote(), timeout=30)
        if health.up and health.generation > generation:
            return
        time.sleep(0.5)
    pytest.fail(f"replica did not re-form its group within {RECOVERY_DEADLINE_S} s")


def _wait_in_flight(ray_cluster, replica) -> None:
    deadline = time.monotonic() + FAULT_DEADLINE_S
    while ray_cluster.get(replica.health.remote(), timeout=30).in_flight == 0:
        if time.monotonic() > deadline:
            pytest.fail("the request never reached the replica")
        time.sleep(0.05)
    time.sleep(0.3)  # a few decode steps in


def test_same_prefix_key_lands_on_one_replica_and_reuses_its_prefix_cache(ray_cluster, replicas):
    router = _router(ray_cluster, replicas)
    before = [ray_cluster.get(r.health.remote()).prefix_cache.prompt_tokens_reused for r in replicas]
    # two jobs at once: least-loaded choice puts them on different replicas, affinity keeps each job on its own
    first = ray_cluster.get([router.generate.remote(SHARED_PREFIX + [job], SHORT, prefix_key=f"job-{job}")
                             for job in (1, 2)], timeout=120)
    assert {r.replica for r in first} == {0, 1}
    # the other trajectories of each job: same replica as the job's first request, prefix served from its cache
    rest = ray_cluster.get([router.generate.remote(SHARED_PREFIX + [job, k], SHORT, prefix_key=f"job-{job}")
                            for job in (1, 2) for k in range(3)], timeout=120)
    home = {job: r.replica for job, r in zip((1, 2), first, strict=True)}
    assert [r.replica for r in rest] == [home[1]] * 3 + [home[2]] * 3
    assert all(r.completion.num_cached_tokens == len(SHARED_PREFIX) for r in rest)
    after = [ray_cluster.get(r.health.remote()).prefix_cache.prompt_tokens_reused for r in replicas]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3 * len(SHARED_PREFIX)] * 2


def test_killed_rank_fails_over_to_the_other_replica_and_comes_back(ray_cluster, replicas):
    router = _router(ray_cluster, replicas)
    victim = replicas[0]
    generation = ray_cluster.get(victim.health.remote()).generation
    # both idle: the least-loaded choice is replica 0
    pending = router.generate.remote(SHARED_PREFIX, LONG, prefix_key="job-fault")
    _wait_in_flight(ray_cluster, victim)
    ray_cluster.kill(ray_cluster.get(victim.rank_actors.remote())[1], no_restart=False)

    routed = ray_cluster.get(pending, timeout=FAULT_DEADLINE_S)
    assert (routed.replica, routed.attempts) == (1, 2)
    assert len(routed.completion.token_ids) == LONG.max_tokens

    _wait_until_up(ray_cluster, victim, generation)
    again = ray_cluster.get(victim.generate.remote(SHARED_PREFIX, SHORT), timeout=60)
    assert again.token_ids == routed.completion.token_ids[: SHORT.max_tokens]


def test_killed_rank_of_the_only_replica_gives_a_retriable_error(ray_cluster, replicas):
    only = replicas[1]
    router = _router(ray_cluster, [only])
    generation = ray_cluster.get(only.health.remote()).generation
    pending = router.generate.remote(SHARED_PREFIX, LONG)
    _wait_in_flight(ray_cluster, only)
    ray_cluster.kill(ray_cluster.get(only.rank_actors.remote())[0], no_restart=False)

    with pytest.raises(NoReplicaAvailableError) as failure:
        ray_cluster.get(pending, timeout=FAULT_DEADLINE_S)
    assert isinstance(failure.value, RetriableError)
    frontend = RouterFrontend(router, tokenizer=None, max_model_len=0)  # what the server's /health, /ready ask
    assert asyncio.run(frontend.unavailable()).startswith("no replica is up (of 1)")
    assert asyncio.run(frontend.dead()) is None  # not ready, but alive: a restart would not help

    _wait_until_up(ray_cluster, only, generation)
    ray_cluster.get(router.check_health.remote(), timeout=30)
    assert asyncio.run(frontend.unavailable()) is None
    routed = ray_cluster.get(router.generate.remote(SHARED_PREFIX, SHORT), timeout=60)
    assert routed.replica == 0 and len(routed.completion.token_ids) == SHORT.max_tokens
