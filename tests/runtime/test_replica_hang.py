"""A rank of a real EP = 2 replica that stops answering without dying (its one thread held) is restarted after the
replica's hang timeout, and the group re-forms and serves the same tokens (before: the replica waited for good)."""

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


def _hold(_rank) -> None:
    time.sleep(3600)  # the rank's only thread: every later call to it waits behind this one


def test_a_rank_that_stops_answering_is_restarted_and_the_replica_serves_again(ray_cluster, tiny_kimi_path):
    replica = ReplicaActor.options(num_cpus=0).remote(
        replica_spec(tiny_kimi_path, 2, hang_timeout_s=HANG_TIMEOUT_S))
    try:
        ray_cluster.get(replica.start.remote(), timeout=300)
        before = ray_cluster.get(replica.generate.remote(PROMPTS[0], SHORT), timeout=60)
        held = ray_cluster.get(replica.rank_actors.remote())[1]
        held.__ray_call__.remote(_hold)
        time.sleep(1.0)  # let the hold start first; a later call would hang behind it all the same

        with pytest.raises(ReplicaDownError, match=r"RankHungError: rank\(s\) \[1\] did not answer within 10 s"):
            ray_cluster.get(replica.generate.remote(PROMPTS[0], SHORT), timeout=HANG_TIMEOUT_S + 60)

        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while not ((health := ray_cluster.get(replica.health.remote(), timeout=30)).up and health.generation > 1):
            assert time.monotonic() < deadline, f"replica did not re-form its group within {RECOVERY_DEADLINE_S} s"
            time.sleep(0.5)
        again = ray_cluster.get(replica.generate.remote(PROMPTS[0], SHORT), timeout=60)
        assert again.token_ids == before.token_ids
    finally:
        ray_cluster.kill(replica)
