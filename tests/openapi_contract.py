"""An app's /openapi.json as a contract its responses are held to: the status must be one the operation documents,
the content type one documented for that status, and a JSON body must validate against the documented schema."""

from __future__ import annotations

import httpx
from jsonschema import Draft202012Validator


class Contract:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.seen: set[tuple[str, str, int]] = set()  # (method, path template, status) of every checked response
        self.seen_media: set[tuple[str, str, int, str]] = set()  # ... and its content type

    def operations(self) -> set[tuple[str, str]]:
        return {(method.upper(), path) for path, item in self.spec["paths"].items() for method in item}

    def unseen_success_media(self) -> set[tuple[str, str, int, str]]:
        """The content types documented for a success status seen that no checked response of it had: a client is
        told to expect a body the route never sends (a stream documented as JSON too)."""
        return {(method, template, status, name.split(";")[0].strip())
                for method, template, status in self.seen if status < 300
                for name in self.spec["paths"][template][method.lower()]["responses"][str(status)].get("content", {})
                } - self.seen_media

    def check(self, method: str, template: str, response: httpx.Response) -> httpx.Response:
        """`response` to `method template` against the spec (an AssertionError saying what differs); returned."""
        operation = self.spec["paths"][template][method.lower()]
        status, where = response.status_code, f"{method} {template} -> {response.status_code}"
        assert str(status) in operation["responses"], f"{where}: undeclared status ({response.text[:300]})"
        self.seen.add((method, template, status))
        declared_response = operation["responses"][str(status)]
        for header, spec in declared_response.get("headers", {}).items():
            assert not spec.get("required") or header in response.headers, f"{where}: no {header} header"
        content = declared_response.get("content") or {}
        if not content:
            assert not response.content, f"{where}: a body where none is documented"
            return response
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        declared = {name.split(";")[0].strip(): body for name, body in content.items()}
        assert media_type in declared, f"{where}: {media_type!r} is not among {sorted(declared)}"
        self.seen_media.add((method, template, status, media_type))
        schema = declared[media_type].get("schema")
        if schema and (media_type == "application/json" or media_type.endswith("+json")):
            # the spec's components ride along so its "#/components/schemas/..." references resolve
            validator = Draft202012Validator({**schema, "components": self.spec.get("components", {})})
            errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
                      for error in validator.iter_errors(response.json())]
            assert not errors, f"{where}: the body does not match its schema: {errors}"
        return response
