"""deploy/README.md: its sizing tables are deploy/sizing.py's output (computed, not typed), that script reproduces
the published Kimi K2 facts it starts from, and the heavy commands the README tells users to run exist."""

from __future__ import annotations

import math
import re

from tests.deploy.commands import check_commands
from tests.deploy.conftest import DEPLOY

PUBLISHED_CHECKPOINT_GB = 594  # shared/reference/kimi-k2-thinking.md
PUBLISHED_ACTIVE_B, PUBLISHED_TOTAL_B = 32, 1040


def test_parameter_counts_match_the_published_model(sizing):
    total = sizing.non_expert_params() + sizing.MOE_LAYERS * sizing.EXPERTS * sizing.expert_params()
    active = sizing.non_expert_params() + sizing.MOE_LAYERS * sizing.EXPERTS_PER_TOKEN * sizing.expert_params()
    checkpoint_gb = (sizing.non_expert_params() * sizing.BF16_BYTES + sizing.routed_expert_bytes()) / 1e9
    assert math.isclose(checkpoint_gb, PUBLISHED_CHECKPOINT_GB, rel_tol=0.01)
    assert math.isclose(active / 1e9, PUBLISHED_ACTIVE_B, rel_tol=0.05)
    assert math.isclose(total / 1e9, PUBLISHED_TOTAL_B, rel_tol=0.02)
    assert sizing.KV_BYTES_PER_TOKEN == 576 * 61 * 2


def test_ep8_replica_fits_one_node_with_room_for_kv(sizing):
    assert sizing.rank_weight_bytes(8) < sizing.HBM_BYTES and sizing.kv_room_bytes(8) > 0
    assert sizing.kv_room_bytes(16) > sizing.kv_room_bytes(8)
    for profile in sizing.PROFILES:
        assert sizing.concurrent_jobs(profile, 8) >= 1  # at least one job's 8 trajectories fit its KV room


def test_readme_shows_the_computed_tables(sizing):
    readme = (DEPLOY / "README.md").read_text()
    assert "\n".join(sizing.memory_table()) in readme
    assert "\n".join(sizing.throughput_table()) in readme


def test_readme_commands_are_real():
    readme = (DEPLOY / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", readme, re.DOTALL))
    commands = [match.split() for match in re.findall(r"(?:-- |/bin/)(heavy [\w-]+(?: [\w-]+)*)", blocks)]
    assert len(commands) >= 2  # the key for a tenant, on both paths
    check_commands(commands)
