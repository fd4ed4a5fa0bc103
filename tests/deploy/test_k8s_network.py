"""deploy/k8s's NetworkPolicies, read as a network plugin enforces them (the subset they use: pod and namespace
selectors, numbered TCP ports): every port a pod of ours opens is reached by what needs it and nothing else."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import DEPLOY
from tests.deploy.kustomize import render
from tests.deploy.test_k8s import OVERLAYS, _one, _pod_templates

NAMESPACE = "heavy"
# where Prometheus runs by default (NetworkPolicy heavy-metrics-scrapers, deploy/README.md): the user sets it there
SCRAPER = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
# every pod that may try, as (namespace, pod labels)
SOURCES = {
    "api": (NAMESPACE, {"app.kubernetes.io/name": "heavy-api"}),
    "worker": (NAMESPACE, {"app.kubernetes.io/name": "heavy-worker"}),
    "redis": (NAMESPACE, {"app.kubernetes.io/name": "heavy-redis"}),
    "sentinel": (NAMESPACE, {"app.kubernetes.io/name": "heavy-redis-sentinel"}),
    "ray": (NAMESPACE, {"app.kubernetes.io/name": "heavy-ray"}),
    "a pod of the namespace": (NAMESPACE, {}),
    "a pod of another namespace": ("other", {}),
    "the scraper": SCRAPER,
    "another pod of the scraper's namespace": (SCRAPER[0], {}),
    "a pod labelled as the scraper elsewhere": ("other", SCRAPER[1]),
}
OUR_NAMESPACE = {"api", "worker", "redis", "sentinel", "ray", "a pod of the namespace"}
RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard (its Jobs API runs any code), client server: no authentication
# (pod, port) -> who must reach it; everyone else must not. A port a pod opens that is not here fails the test.
REACHED_BY = {
    ("heavy-api", 8080): set(SOURCES),  # clients, an Ingress controller, the scrapers: the API's /metrics shares it
    ("heavy-worker", 8090): {"the scraper"},  # its /metrics: a thread per connection in the process running jobs
    ("heavy-redis", 6379): {"api", "worker"},
    ("heavy-redis-sentinel", 26379): {"api", "worker", "redis", "sentinel"},
    ("heavy-ray", 8000): OUR_NAMESPACE | {"the scraper"},  # the runtime's API (keyed) and its /metrics (keyless)
    **{("heavy-ray", port): {"ray"} for port in RAY_PORTS},
}
UNDER_SENTINEL = {("heavy-redis", 6379): {"api", "worker", "redis", "sentinel"}}  # the replica, the sentinels


@pytest.fixture(scope="module", params=OVERLAYS, ids=[f"{name}-overlay" for name in OVERLAYS])
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(DEPLOY / "k8s" / "overlays" / request.param)


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for term in selector.get("matchExpressions", []):
        held, value = term["key"] in labels, labels.get(term["key"])
        if not {"In": held and value in term.get("values", ()), "NotIn": value not in term.get("values", ()),
                "Exists": held, "DoesNotExist": not held}[term["operator"]]:
            return False
    return True


def _peer_admits(peer: dict, policy_namespace: str, source: tuple[str, dict[str, str]]) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}, peer  # an ipBlock is not modelled
    namespace, labels = source
    if "namespaceSelector" in peer:
        in_namespace = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    else:
        in_namespace = namespace == policy_namespace
    return in_namespace and _selects(peer.get("podSelector", {}), labels)


def _port_admits(entries: list[dict] | None, port: int) -> bool:
    for entry in entries or ():
        assert isinstance(entry["port"], int) and entry.get("protocol", "TCP") == "TCP", entry
    return not entries or any(entry["port"] == port for entry in entries)


def _admitted(policies: list[dict], source: tuple[str, dict[str, str]], target: dict[str, str], port: int) -> bool:
    """Whether `source` may connect to `port` of a pod of NAMESPACE labelled `target`: a pod no ingress policy
    selects takes anything; one some select takes what any of their rules admits."""
    isolating = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]
                 and _selects(p["spec"]["podSelector"], target)]
    return not isolating or any(
        (not rule.get("from") or any(_peer_admits(peer, p["metadata"]["namespace"], source) for peer in rule["from"]))
        and _port_admits(rule.get("ports"), port)
        for p in isolating for rule in p["spec"].get("ingress", []))


def _opened_ports(objects: list[dict]):
    """(pod name label, pod labels, port) of every port a container of ours declares."""
    for obj in objects:
        for template in _pod_templates(obj):
            labels = template["metadata"]["labels"]
            for container in template["spec"]["containers"]:
                for entry in container.get("ports", []):
                    yield labels.get("app.kubernetes.io/name"), labels, entry["containerPort"]


def test_every_port_our_pods_open_is_reached_only_by_what_needs_it(overlay):
    """The workers' metrics port only by the scrapers; Ray's unauthenticated ports only by Ray's pods; Redis and the
    sentinels by their clients and one another; the runtime's API by the namespace and the scrapers; the API by
    anyone. Each policy is read as enforced, so a new port, or a policy that lets more in, fails here."""
    name, objects = overlay
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    assert all(policy["metadata"]["namespace"] == NAMESPACE for policy in policies)
    expected = REACHED_BY | (UNDER_SENTINEL if name == "cpu-ha" else {})
    opened = list(_opened_ports(objects))
    assert {(pod, port) for pod, _, port in opened} >= {("heavy-worker", 8090), ("heavy-ray", 8000)}
    for pod, labels, port in opened:
        assert (pod, port) in expected, f"{pod} opens {port}: say who reaches it"
        reached = {source for source, (namespace, source_labels) in SOURCES.items()
                   if _admitted(policies, (namespace, source_labels), labels, port)}
        assert reached == expected[pod, port], (pod, port)


def test_the_scrapers_are_named_in_one_place_and_reach_what_is_annotated_for_them(overlay):
    """Setting the scrapers is one edit (heavy-metrics-scrapers), and every port a pod is annotated to be scraped on
    admits them."""
    _, objects = overlay
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    naming = [p for p in policies for rule in p["spec"].get("ingress", []) for peer in rule.get("from", ())
              if "namespaceSelector" in peer]
    assert [p["metadata"]["name"] for p in naming] == ["heavy-metrics-scrapers"]
    head = _pod_templates(_one(objects, "RayCluster", "heavy"))[0]
    runtime_scrape = _one(objects, "Service", "heavy-runtime")["metadata"]["annotations"]
    scraped = [(head, runtime_scrape)] + [(template, template["metadata"]["annotations"]) for name in
                                          ("heavy-api", "heavy-worker")
                                          for template in _pod_templates(_one(objects, "Deployment", name))]
    for template, scrape in scraped:
        port = int(scrape["prometheus.io/port"])
        assert _admitted(policies, SCRAPER, template["metadata"]["labels"], port), port
