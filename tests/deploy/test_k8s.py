"""deploy/k8s: both overlays render (tests/deploy/kustomize.py, the subset we use) and every object validates
offline — built-in kinds against Kubernetes' own schemas (kubernetes-validate, strict: unknown fields fail),
RayCluster against the fields KubeRay's CRD requires plus the checks of its validating code, and its pod templates
as Kubernetes PodTemplateSpecs. Then the wiring: probes, AOF, volumes, references, commands, settings."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import kubernetes_validate
import pytest
import yaml

from heavy.config import Settings
from runtime.cli import API_KEY_ENV
from runtime.server.gate import OPEN_PATHS
from tests.deploy.commands import check_commands
from tests.deploy.conftest import DEPLOY
from tests.deploy.kustomize import KustomizeError, apply_operation, render

K8S_VERSION = "1.33"  # the oldest Kubernetes we claim; kubernetes-validate picks its schemas for it
OVERLAYS = ("cpu", "gpu", "cpu-ha")  # cpu-ha: the cpu one with the components (Redis under Sentinel, the sandbox's)
RAYCLUSTER_SCHEMA = json.loads((Path(__file__).with_name("raycluster_v1.schema.json")).read_text())
SECRET_ENV = {"REDIS_PASSWORD"}  # read by the Redis container, not by our code


@pytest.fixture(scope="module", params=OVERLAYS, ids=[f"{name}-overlay" for name in OVERLAYS])
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(DEPLOY / "k8s" / "overlays" / request.param)


def _one(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    return found


def _pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "RayCluster":
        spec = obj["spec"]
        return [spec["headGroupSpec"]["template"], *(group["template"] for group in spec.get("workerGroupSpecs", []))]
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [obj["spec"]["template"]]
    return []


def _containers(objects: list[dict]):
    for obj in objects:
        for template in _pod_templates(obj):
            for container in template["spec"]["containers"]:
                yield obj, template, container


def test_builtin_objects_validate_against_kubernetes_schemas(overlay):
    _, objects = overlay
    builtin = [obj for obj in objects if obj["kind"] != "RayCluster"]
    assert {obj["kind"] for obj in builtin} >= {"ConfigMap", "Secret", "Service", "StatefulSet", "Deployment"}
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["namespace"] == "heavy"


def test_raycluster_validates_against_the_crd_and_kuberay_rules(overlay):
    name, objects = overlay
    cluster = _one(objects, "RayCluster", "heavy")
    jsonschema.validate(cluster, RAYCLUSTER_SCHEMA)
    for template in _pod_templates(cluster):  # the CRD embeds core/v1 PodTemplateSpec
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": template}, K8S_VERSION, strict=True)
    # ray-operator/controllers/ray/utils/validation.go (same commit as the schema): containers present,
    # min <= replicas <= max, resources not in both rayStartParams and `resources`, no rayStartParams labels.
    spec = cluster["spec"]
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        assert group["template"]["spec"]["containers"]
        params = group.get("rayStartParams", {})
        assert not (set(params) & {"num-cpus", "num-gpus", "memory", "resources"} and group.get("resources"))
        assert "labels" not in params
    for group in spec.get("workerGroupSpecs", []):
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    assert (name == "gpu") == bool(spec.get("workerGroupSpecs"))


def test_a_changed_ray_cluster_spec_reaches_its_pods(overlay):
    """KubeRay replaces no running pod of a RayCluster unless its upgradeStrategy is Recreate (raycluster_controller.go
    shouldRecreatePodsForUpgrade, v1.6+): a new image, or the `--replicas` deploy/README.md has one change to scale
    the model, left the head serving the spec it started with while the apply succeeded."""
    _, objects = overlay
    assert _one(objects, "RayCluster", "heavy")["spec"]["upgradeStrategy"] == {"type": "Recreate"}


def test_every_container_has_requests_limits_and_runs_non_root(overlay):
    _, objects = overlay
    for obj, template, container in _containers(objects):
        resources = container["resources"]
        assert set(resources) == {"requests", "limits"}, (obj["metadata"]["name"], container["name"])
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_pods_of_ours_carry_no_kubernetes_api_token(overlay):
    # the worker's python tool runs model-written code as the worker's user where user namespaces are not allowed
    # (the default seccomp profile): the service-account token mounted by default was readable to it
    _, objects = overlay
    for kind, name in (("Deployment", "heavy-worker"), ("Deployment", "heavy-api"), ("StatefulSet", "heavy-redis")):
        assert _one(objects, kind, name)["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, name


def test_api_probes_hit_healthz_and_readyz_behind_a_service(overlay):
    _, objects = overlay
    api = _one(objects, "Deployment", "heavy-api")
    [container] = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    from heavy.api.routes_ops import router  # the paths are the API's own

    assert {"/healthz", "/readyz"} <= {route.path for route in router.routes}
    service = _one(objects, "Service", "heavy-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()


def test_runtime_probes_restart_it_only_when_dead_and_route_around_it_while_no_replica_is_up(overlay):
    _, objects = overlay
    cluster = _one(objects, "RayCluster", "heavy")
    runtime = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][1]
    assert runtime["livenessProbe"]["httpGet"]["path"] == runtime["startupProbe"]["httpGet"]["path"] == "/health"
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/ready"
    from runtime.server.app import create_app  # the paths are the runtime server's own

    app = create_app(SimpleNamespace(tokenizer=None), model_name="unused", max_body_bytes=1)  # no engine to size it
    assert {"/health", "/ready"} <= {route.path for route in app.routes}


def test_the_runtime_wants_the_key_the_workers_send(overlay):
    """The runtime serves on 0.0.0.0:8000, open to the namespace's pods (NetworkPolicy heavy-ray): its
    RUNTIME_API_KEY is the Secret's HEAVY_OPENAI_API_KEY, which the workers send; the probes and the scrape need none
    (server/gate.py)."""
    _, objects = overlay
    cluster = _one(objects, "RayCluster", "heavy")
    runtime = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][1]
    [key] = [env["valueFrom"]["secretKeyRef"] for env in runtime.get("env", []) if env["name"] == API_KEY_ENV]
    assert key == {"name": "heavy-secrets", "key": "HEAVY_OPENAI_API_KEY"}
    assert _one(objects, "Secret", "heavy-secrets")["stringData"]["HEAVY_OPENAI_API_KEY"]  # a value to replace
    worker = _one(objects, "Deployment", "heavy-worker")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "heavy-secrets"}} in worker["envFrom"]
    assert _one(objects, "ConfigMap", "heavy-config")["data"]["HEAVY_OPENAI_BASE_URL"] == "http://heavy-runtime:8000/v1"
    probes = [runtime[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")]
    scraped = _one(objects, "Service", "heavy-runtime")["metadata"]["annotations"]["prometheus.io/path"]
    assert {*probes, scraped} <= OPEN_PATHS


def test_the_api_and_worker_pods_are_scraped_where_their_process_serves_metrics(overlay, monkeypatch):
    """Each API pod and each worker pod is scraped by its annotations: a worker's counters (jobs ended, steps,
    tokens) are in its own process, which serves them on HEAVY_WORKER_METRICS_PORT, not in the API's."""
    _, objects = overlay
    for name, value in _one(objects, "ConfigMap", "heavy-config")["data"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    from heavy.api.routes_ops import router  # the path is the API's own

    assert "/metrics" in {route.path for route in router.routes}
    for name, port in (("heavy-api", settings.api_port), ("heavy-worker", settings.worker_metrics_port)):
        template = _one(objects, "Deployment", name)["spec"]["template"]
        scrape = template["metadata"]["annotations"]
        [container] = template["spec"]["containers"]
        assert scrape["prometheus.io/scrape"] == "true" and scrape["prometheus.io/path"] == "/metrics", name
        assert int(scrape["prometheus.io/port"]) == port in {p["containerPort"] for p in container["ports"]}, name


def test_redis_keeps_an_append_only_file_on_a_persistent_volume(overlay):
    _, objects = overlay
    redis = _one(objects, "StatefulSet", "heavy-redis")
    [container] = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    # full: writes refused (the API answers 5xx) rather than the pod OOM-killed, or jobs' keys evicted
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = args[args.index("--maxmemory") + 1]
    assert int(maxmemory.removesuffix("gb")) * 2**30 < int(container["resources"]["limits"]["memory"].removesuffix(
        "Gi")) * 2**30
    data_dir = args[args.index("--dir") + 1]
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in container["volumeMounts"]


def test_services_select_pods_that_exist(overlay):
    _, objects = overlay
    pod_labels = [template["metadata"].get("labels", {}) for obj in objects for template in _pod_templates(obj)]
    ray_head = {"ray.io/cluster": "heavy", "ray.io/node-type": "head"}  # labels KubeRay puts on the head pod
    for service in (obj for obj in objects if obj["kind"] == "Service"):
        selector = service["spec"]["selector"]
        assert selector == ray_head or any(selector.items() <= labels.items() for labels in pod_labels), selector


def test_references_to_configmaps_secrets_and_claims_resolve(overlay):
    _, objects = overlay
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    for obj, template, container in _containers(objects):
        for source in container.get("envFrom", []):
            kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret",
                                                                                            source["secretRef"])
            assert (kind, ref["name"]) in names
        for env in container.get("env", []):
            if "valueFrom" in env:
                assert ("Secret", env["valueFrom"]["secretKeyRef"]["name"]) in names
        volumes = {volume["name"] for volume in template["spec"].get("volumes", [])}
        claims = {claim["metadata"]["name"] for claim in obj["spec"].get("volumeClaimTemplates", [])}
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes | claims, (obj["metadata"]["name"], mount)
        for volume in template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names


def _argv(container: dict) -> list[str]:
    """The command line a container runs; a `bash -c` wrapper's own `exec` line gets the container args."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv[:2] == ["bash", "-c"]:
        script, args = argv[2], argv[4:]
        exec_line = shlex.split(script.rsplit("exec ", 1)[1])
        return [word for word in exec_line if word != '$@'] + args
    return argv


def test_container_commands_are_real_commands(overlay):
    _, objects = overlay
    commands = [_argv(container) for _, _, container in _containers(objects)
                if container["image"].startswith("heavy-") and container.get("command")]
    assert len(commands) >= 3  # API, worker, runtime (and the GPU overlay's download job)
    check_commands(commands)


def test_configuration_is_only_settings_the_code_reads(overlay, monkeypatch):
    """Every HEAVY_* value set is a field of heavy.config.Settings, and together they pass its validation."""
    _, objects = overlay
    config = _one(objects, "ConfigMap", "heavy-config")["data"]
    secret = _one(objects, "Secret", "heavy-secrets")["stringData"]
    fields = {f"HEAVY_{name.upper()}" for name in Settings.model_fields}
    for name in {*config, *secret} - SECRET_ENV:
        assert name in fields, f"{name} is not a setting in heavy/config.py"
    for name, value in {**config, **secret}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_url.startswith(("redis://", "redis+sentinel://")) and settings.backend == "openai"


def test_every_overlay_is_tested_and_every_component_used_by_one():
    k8s = DEPLOY / "k8s"
    assert sorted(path.name for path in (k8s / "overlays").iterdir()) == sorted(OVERLAYS)
    used = {(k8s / "overlays" / name / entry).resolve() for name in OVERLAYS
            for entry in yaml.safe_load((k8s / "overlays" / name / "kustomization.yaml").read_text()).get(
                "components", [])}
    assert used == {path.resolve() for path in (k8s / "components").iterdir()}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="compares with kubectl's own kustomize")
def test_the_renderer_builds_what_kubectl_kustomize_builds(overlay):
    name, objects = overlay
    built = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / name)], capture_output=True,
                           text=True, timeout=120, check=True).stdout
    by_name = {(obj["kind"], obj["metadata"]["name"]): obj for obj in yaml.safe_load_all(built) if obj}
    assert {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects} == by_name


def test_gpu_overlay_sizes_match_the_runtime_arguments(sizing):
    objects = render(DEPLOY / "k8s" / "overlays" / "gpu")
    cluster = _one(objects, "RayCluster", "heavy")
    runtime = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][1]
    args = runtime["args"]
    replicas, ep = int(args[args.index("--replicas") + 1]), int(args[args.index("--ep") + 1])
    [group] = cluster["spec"]["workerGroupSpecs"]
    [ray_worker] = group["template"]["spec"]["containers"]
    assert group["replicas"] == replicas and int(ray_worker["resources"]["limits"]["nvidia.com/gpu"]) == ep == 8
    assert ray_worker["image"].startswith("heavy-cuda")
    assert {"--model", "/models/kimi-k2-thinking"} <= set(args)
    # heavy fits its prompts to the context the server reports, and fails every job whose step and reasoning room
    # do not fit it: the server's context is the ConfigMap's, in a KV cache that holds it and fits beside the weights
    context = int(_one(objects, "ConfigMap", "heavy-config")["data"]["HEAVY_CONTEXT_TOKENS"])
    assert int(args[args.index("--max-model-len") + 1]) == context
    kv_cache_bytes = float(args[args.index("--kv-cache-gib") + 1]) * 2**30
    assert context * sizing.KV_BYTES_PER_TOKEN <= kv_cache_bytes <= sizing.kv_room_bytes(ep)


@pytest.mark.parametrize("operation, expected", [
    ({"op": "add", "path": "/a/-", "value": 3}, {"a": [1, 2, 3], "b": {"c": 1}}),
    ({"op": "add", "path": "/a/0", "value": 0}, {"a": [0, 1, 2], "b": {"c": 1}}),
    ({"op": "replace", "path": "/b/c", "value": 2}, {"a": [1, 2], "b": {"c": 2}}),
    ({"op": "remove", "path": "/a/1"}, {"a": [1], "b": {"c": 1}}),
    ({"op": "add", "path": "/b/d~1e", "value": 4}, {"a": [1, 2], "b": {"c": 1, "d/e": 4}}),
])
def test_json_patch_operations(operation, expected):
    document = {"a": [1, 2], "b": {"c": 1}}
    apply_operation(document, operation)
    assert document == expected


@pytest.mark.parametrize("operation", [
    {"op": "replace", "path": "/missing", "value": 1},
    {"op": "remove", "path": "/a/5"},
    {"op": "move", "path": "/b/c", "from": "/a"},
    {"op": "add", "path": "a", "value": 1},
])
def test_json_patch_refuses_what_kustomize_would_reject(operation):
    with pytest.raises(KustomizeError):
        apply_operation({"a": [1, 2], "b": {"c": 1}}, operation)


def test_renderer_refuses_fields_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)


def test_renderer_refuses_what_kustomize_refuses_of_paths_and_components(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{DEPLOY / 'k8s' / 'base'}]\n")
    with pytest.raises(KustomizeError, match="cannot be absolute"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("components: [base]\n")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "kustomization.yaml").write_text("resources: []\n")  # a Kustomization, not a Component
    with pytest.raises(KustomizeError, match="not a kustomize.config.k8s.io/v1alpha1 Component"):
        render(tmp_path)
