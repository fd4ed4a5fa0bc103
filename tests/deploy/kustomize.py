"""An offline renderer for the kustomize subset deploy/k8s uses: `resources` (files and directories), `components`
(a Component's own `resources` and `patches`), `namespace`, `images` (newName/newTag) and `patches` whose file is a
JSON 6902 operation list with a kind/name target.

Any other kustomization field, or a strategic-merge patch, is refused: the tests must never render less than
`kubectl apply -k` would apply. Order as in kustomize: resources, then components (each adds its resources, then
patches everything so far), then patches, then image and namespace transformers; images are rewritten in every
`containers`/`initContainers` list anywhere in an object (so in CRDs too).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches"}
COMPONENT = ("kustomize.config.k8s.io/v1alpha1", "Component")
COMPONENT_FIELDS = {"apiVersion", "kind", "resources", "patches"}
CONTAINER_LISTS = ("containers", "initContainers")


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or a patch does not apply."""


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` would print, in resource order."""
    kustomization = _kustomization(directory, SUPPORTED_FIELDS)
    if (kustomization.get("apiVersion"), kustomization.get("kind")) == COMPONENT:
        raise KustomizeError(f"{directory}: a Component is used from `components`, not as a resource")
    objects = _resources(directory, kustomization)
    for entry in kustomization.get("components", []):
        component = _relative(directory, entry)
        fields = _kustomization(component, COMPONENT_FIELDS)
        if (fields.get("apiVersion"), fields.get("kind")) != COMPONENT:
            raise KustomizeError(f"{component}: not a {COMPONENT[0]} Component")
        objects += _resources(component, fields)
        for patch in fields.get("patches", []):
            _apply_patch(component, patch, objects)
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, objects)
    for image in kustomization.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _kustomization(directory: Path, supported: set[str]) -> dict:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - supported
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    return kustomization


def _resources(directory: Path, kustomization: dict) -> list[dict]:
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = _relative(directory, entry)
        objects += render(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def _relative(directory: Path, entry: str) -> Path:
    if Path(entry).is_absolute():
        raise KustomizeError(f"{directory}: {entry} cannot be absolute (kustomize refuses it)")
    return (directory / entry).resolve()


def _apply_patch(directory: Path, patch: dict, objects: list[dict]) -> None:
    if set(patch) != {"path", "target"} or set(patch["target"]) - {"kind", "name"}:
        raise KustomizeError(f"{directory}: a patch needs exactly `path` and a kind/name `target`, got {patch}")
    operations = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(operations, list):
        raise KustomizeError(f"{directory / patch['path']}: only JSON 6902 patches (a list of operations)")
    targets = [obj for obj in objects if _matches(obj, patch["target"])]
    if not targets:
        raise KustomizeError(f"{directory}: patch {patch['path']} matches no object ({patch['target']})")
    for obj in targets:
        for operation in operations:
            apply_operation(obj, operation)


def _matches(obj: dict, target: dict) -> bool:
    return obj["kind"] == target.get("kind", obj["kind"]) and obj["metadata"]["name"] == target.get(
        "name", obj["metadata"]["name"])


def apply_operation(document: dict, operation: dict) -> None:
    """One RFC 6902 `add`, `replace` or `remove` on `document`, in place."""
    op, tokens = operation["op"], _pointer(operation["path"])
    parent = document
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent) - (op != "add"):
            raise KustomizeError(f"{operation['path']}: index {index} out of range")
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise KustomizeError(f"unsupported JSON patch op {op!r}")
        return
    if op in ("replace", "remove") and last not in parent:
        raise KustomizeError(f"{operation['path']}: nothing to {op}")
    if op in ("add", "replace"):
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"unsupported JSON patch op {op!r}")


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _set_image(node, image: dict) -> None:
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in CONTAINER_LISTS and isinstance(value, list):
            for container in value:
                name, _, tag = container["image"].partition(":")  # our images have no registry port
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
        else:
            _set_image(value, image)
