"""deploy/README.md: its sizing tables are deploy/sizing.py's output (computed, not typed), that script reproduces
the published Kimi K2 facts it starts from, and the heavy commands the README tells users to run exist; the same for
the commands of the project's README.md and docs/, and the scripts they name."""

from __future__ import annotations

import math
import re
import shlex

from tests.deploy.commands import check_commands
from tests.deploy.conftest import DEPLOY, REPO_ROOT

PUBLISHED_CHECKPOINT_GB = 594  # shared/reference/kimi-k2-thinking.md
PUBLISHED_ACTIVE_B, PUBLISHED_TOTAL_B = 32, 1040
DOCUMENTS = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))
# a command as the README and docs write it, in a code block or inline, up to a comment, `&`, `|`, `;` or backtick
VENV_COMMAND = re.compile(r"\.venv/bin/((?:heavy|python -m runtime) [^#&|;`\n]*)")
SCRIPT = re.compile(r"\bscripts/\w+\.py\b")


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


def test_the_commands_of_the_readme_and_docs_are_real():
    commands = [shlex.split(found) for document in DOCUMENTS for found in VENV_COMMAND.findall(document.read_text())]
    assert len(commands) >= 10  # README: corpus add, ask, up, keys create, serve, worker, runtime generate/chat/serve
    check_commands(commands)


def test_the_scripts_the_readmes_and_docs_name_exist():
    named = {name for document in (*DOCUMENTS, DEPLOY / "README.md") for name in SCRIPT.findall(document.read_text())}
    assert named and not [name for name in sorted(named) if not (REPO_ROOT / name).is_file()]
