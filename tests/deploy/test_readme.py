"""deploy/README.md: its sizing tables are deploy/sizing.py's output (computed, not typed), that script reproduces
the published Kimi K2 facts it starts from, and the heavy commands the README tells users to run exist; the same for
the commands of the project's README.md and docs/, and the scripts they name; docs/settings.md gives every setting
once with the code's default, and the variables the READMEs and docs name are ones the code reads."""

from __future__ import annotations

import json
import math
import re
import shlex

from pydantic import TypeAdapter

from heavy.config import Settings
from tests.deploy.commands import check_commands
from tests.deploy.conftest import DEPLOY, REPO_ROOT

PUBLISHED_CHECKPOINT_GB = 594  # shared/reference/kimi-k2-thinking.md
PUBLISHED_ACTIVE_B, PUBLISHED_TOTAL_B = 32, 1040
DOCUMENTS = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))
# a command as the README and docs write it, in a code block or inline, up to a comment, `&`, `|`, `;` or backtick
VENV_COMMAND = re.compile(r"\.venv/bin/((?:heavy|python -m runtime) [^#&|;`\n]*)")
SCRIPT = re.compile(r"\bscripts/\w+\.py\b")
# a script as the READMEs and docs run it: its path, then its options (a value after each, at most)
SCRIPT_RUN = re.compile(r"\b(scripts/\w+\.py)((?: --?[a-z][\w-]*(?: [^\s`#|;&(-][^\s`#|;&)]*)?)*)")
SETTINGS_DOCUMENT = REPO_ROOT / "docs" / "settings.md"
# a row of docs/settings.md: | `VARIABLE` | default | what |, or several variables in the first cell
SETTING_ROW = re.compile(r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \| ([^|]+) \|", re.MULTILINE)
# a variable as the READMEs and docs name it; HEAVY_RUNTIME_* names a family
VARIABLE = re.compile(r"\b(?:HEAVY|RUNTIME)_[A-Z0-9_]*[A-Z0-9](?:_\*)?")


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


def _script_source(script: str) -> str:
    """A script's text and that of the scripts/ modules it imports (bench scripts share their options' parser)."""
    text = (REPO_ROOT / script).read_text()
    helpers = re.findall(r"^(?:from|import) (\w+)", text, re.MULTILINE)
    return "\n".join([text, *((REPO_ROOT / "scripts" / f"{name}.py").read_text() for name in helpers
                               if (REPO_ROOT / "scripts" / f"{name}.py").is_file())])


def test_the_options_the_readmes_and_docs_give_scripts_are_theirs():
    runs = [run for document in (*DOCUMENTS, DEPLOY / "README.md") for run in SCRIPT_RUN.findall(document.read_text())]
    unknown = sorted({(script, option) for script, options in runs for option in re.findall(r"--[a-z][\w-]*", options)
                      if f'"{option}"' not in _script_source(script)})
    assert len(runs) >= 10 and not unknown, unknown


def test_the_readme_starts_with_make_demo_and_make_test():
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL).group(1)
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == ["make demo", "make test"]


def _documented_settings() -> dict[str, list[str]]:
    """docs/settings.md's rows: each variable named in a first cell, with the default cells given for it."""
    rows: dict[str, list[str]] = {}
    for names, default in SETTING_ROW.findall(SETTINGS_DOCUMENT.read_text()):
        for name in re.findall(r"`([A-Z0-9_]+)`", names):
            rows.setdefault(name, []).append(default.strip())
    return rows


def _default_as_written(cell: str):
    if cell in ("unset", "none"):
        return None
    if cell == "empty":
        return ""
    value = cell.strip("`")
    return json.loads(value) if value.startswith("[") else value


def test_every_setting_is_documented_once_with_the_default_of_the_code():
    rows = _documented_settings()
    for name, field in Settings.model_fields.items():
        defaults = rows.get(f"HEAVY_{name.upper()}", [])
        assert len(defaults) == 1, f"HEAVY_{name.upper()}: {len(defaults)} rows in docs/settings.md, not 1"
        written = TypeAdapter(field.annotation).validate_python(_default_as_written(defaults[0]))
        assert written == field.default, f"HEAVY_{name.upper()}: docs/settings.md says {defaults[0]}"


def test_every_variable_the_readmes_and_docs_name_is_a_setting():
    known = set(_documented_settings())
    documents = (*DOCUMENTS, DEPLOY / "README.md")
    named = {name for document in documents for name in VARIABLE.findall(document.read_text())}
    unknown = [name for name in sorted(named) if name not in known
               and not (name.endswith("_*") and any(setting.startswith(name[:-1]) for setting in known))]
    assert not unknown, f"named in the READMEs or docs, read by no code (docs/settings.md): {unknown}"
