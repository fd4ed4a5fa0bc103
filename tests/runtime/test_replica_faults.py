"""Faults of a real EP = 2 replica that no request in flight reveals: a rank that stops answering without dying (its
one thread held) and a rank killed while the replica is idle. Either way the replica re-forms its group and serves
the same tokens again (before: a held rank kept the replica waiting for good; an idle replica never noticed)."""

import time

import pytest

from runtime.replica.errors import ReplicaDownError
from runtime.replica.replica import ReplicaActor
from runtime.sampling import SamplingParams
from tests.runtime.replica_fixtures import PROMPTS, replica_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SHORT = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
HANG_TIMEOUT_S = 10.0
RECOVERY_DEADLINE_S = 150  # the restarted rank reloads its weights before the group re-forms


@pytest.fixture(scope="module")
def replica(ray_cluster, tiny_kimi_path):
    handle = ReplicaActor.options(num_cpus=0).remote(replica_spec(tiny_kimi_path, 2, hang_timeout_s=HANG_TIMEOUT_S))
    ray_cluster.get(handle.start.remote(), timeout=300)
    yield handle
    ray_cluster.kill(handle)


def _hold(_rank) -> None:
    time.sleep(3600)  # the rank's only thread: every later call to it waits behind this one


def _reformed(ray_cluster, replica, generation: int) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while not ((health := ray_cluster.get(replica.health.remote(), timeout=30)).up and health.generation > generation):
        assert time.monotonic() < deadline, f"replica did not re-form its group within {RECOVERY_DEADLINE_S} s"
        time.sleep(0.5)


def test_a_rank_that_stops_answering_is_restarted_and_the_replica_serves_again(ray_cluster, replica):
    before = ray_cluster.get(replica.generate.remote(PROMPTS[0], SHORT), timeout=60)
    generation = ray_cluster.get(replica.health.remote(), timeout=30).generation
    ray_cluster.get(replica.rank_actors.remote())[1].__ray_call__.remote(_hold)
    time.sleep(1.0)  # let the hold start first; a later call would hang behind it all the same

    with pytest.raises(ReplicaDownError, match=r"RankHungError: rank\(s\) \[1\] did not answer within 10 s"):
        ray_cluster.get(replica.generate.remote(PROMPTS[0], SHORT), timeout=HANG_TIMEOUT_S + 60)
    _reformed(ray_cluster, replica, generation)
    assert ray_cluster.get(replica.generate.remote(PROMPTS[0], SHORT), timeout=60).token_ids == before.token_ids


def test_a_rank_killed_while_idle_is_noticed_by_the_health_check(ray_cluster, replica):
    before = ray_cluster.get(replica.generate.remote(PROMPTS[1], SHORT), timeout=60)
    generation = ray_cluster.get(replica.health.remote(), timeout=30).generation
    ray_cluster.kill(ray_cluster.get(replica.rank_actors.remote())[1], no_restart=False)

    _reformed(ray_cluster, replica, generation)  # only health checks reach the replica meanwhile
    assert ray_cluster.get(replica.generate.remote(PROMPTS[1], SHORT), timeout=60).token_ids == before.token_ids
