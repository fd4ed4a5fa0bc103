"""deploy/ray/cluster.yaml validates against the schema inside the installed `ray` package (as `ray up` checks it),
also after Ray fills in its provider defaults; the GPU group holds one EP = 8 replica per node; its commands and
the head's service script use real commands and settings."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from heavy.config import Settings
from tests.deploy.commands import check_commands
from tests.deploy.conftest import DEPLOY

CLUSTER = DEPLOY / "ray" / "cluster.yaml"
SERVICES = DEPLOY / "ray" / "start_services.sh"
RAY_SCHEMA = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
EP = 8
H200_PER_NODE = 8


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_validates_against_rays_own_schema(cluster):
    jsonschema.validate(cluster, json.loads(RAY_SCHEMA.read_text()))


def test_validates_after_ray_fills_its_defaults(cluster):
    """What `ray up` does before it touches the cloud: merge the provider's defaults, then validate."""
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_schema_catches_a_misspelt_field(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_h200x8"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(RAY_SCHEMA.read_text()))


def test_gpu_nodes_hold_one_ep8_replica_each_and_the_head_no_rank(cluster):
    types = cluster["available_node_types"]
    gpu = types["gpu_h200x8"]
    assert gpu["resources"]["GPU"] == H200_PER_NODE == EP
    assert "GPU" not in types[cluster["head_node_type"]]["resources"]
    assert gpu["max_workers"] <= cluster["max_workers"]
    assert re.search(r"^EP=\$\{EP:-8\}$", SERVICES.read_text(), re.MULTILINE)


def _command_lines(cluster: dict) -> list[list[str]]:
    """Each `a && b; c` setup/start command, split into simple command lines (env prefixes and sudo dropped)."""
    lines = []
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands")
    for command in (c for key in keys for c in cluster[key]):
        for part in re.split(r"&&|;|\|\|", command):
            words = shlex.split(part)
            while words and (words[0] == "sudo" or "=" in words[0]):
                words.pop(0)
            if words:
                lines.append(words)
    return lines


def test_ray_and_project_commands_are_real(cluster):
    lines = _command_lines(cluster)
    ours = [line for line in lines if Path(line[0]).name in ("ray", "hf", "heavy")]
    assert len(ours) >= 6
    check_commands([[Path(line[0]).name, *line[1:]] for line in ours])
    installs = [line for line in lines if line[0].endswith("pip") and "install" in line]
    pins = {word for line in installs for word in line if "==" in word}
    assert {"torch==2.13.0", "ray[default]==2.60.0"} <= pins


def test_service_script_runs_real_commands_with_real_settings():
    script = SERVICES.read_text()
    subprocess.run(["bash", "-n", str(SERVICES)], check=True)
    fields = {f"HEAVY_{name.upper()}" for name in Settings.model_fields}
    exported = set(re.findall(r"^export (HEAVY_\w+)=", script, re.MULTILINE))
    given = set(re.findall(r"(HEAVY_\w+)=.* nohup ", script))  # one process's own (a worker's metrics port)
    assert exported and given and exported | given <= fields
    servers = [command.split() for command in re.findall(r"nohup (heavy \w+)", script)]
    assert len(servers) == 2  # API and workers
    check_commands([*servers, ["python", "-m", "runtime", "serve", "--model", "m", "--replicas", "1", "--ep", "8",
                               "--host", "127.0.0.1", "--port", "8000"]])
