"""Run from an unpacked wheel (PYTHONPATH=ROOT, `python -P`, a working directory outside the checkout): the code
imports from ROOT only, every file a module names at import is there, and the API serves the dashboard (each file
its page loads), the docs' assets and the version. Prints what it found missing; exits 1 if anything is.
Usage: python -P wheel_smoke.py ROOT"""

import asyncio
import dataclasses
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import httpx

ROOT = Path(sys.argv[1]).resolve()
PACKAGES = ("kernels", "runtime", "heavy")


def modules() -> list:
    found = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not info.name.endswith(".__main__"):  # runs its command on import
                found.append(importlib.import_module(info.name))
    return found


def named_paths(module) -> list[tuple[str, Path]]:
    """The paths a module holds at import: its Path globals and their kind in its dataclass globals."""
    named = []
    for name, value in vars(module).items():
        values = [value] if isinstance(value, Path) else []
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            values = [field for field in vars(value).values() if isinstance(field, Path)]
        named += [(f"{module.__name__}.{name}", path) for path in values]
    return named


async def served(paths: list[str]) -> list[httpx.Response]:
    """The API's answers, in process (no lifespan: no Redis; these routes read files only)."""
    from heavy.api.app import create_app
    from heavy.config import Settings

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(Settings())),
                                 base_url="http://heavy.test") as client:
        return [await client.get(path) for path in paths]


def main() -> list[str]:
    missing = []
    for module in modules():
        if not Path(module.__file__).resolve().is_relative_to(ROOT):
            missing.append(f"{module.__name__} imported from {module.__file__}, not the wheel")
        for name, path in named_paths(module):
            if path.resolve().is_relative_to(ROOT) and not path.exists():
                missing.append(f"{name} = {path}")
    from heavy import __version__
    from heavy.api.middleware import DASHBOARD

    assets = re.findall(r'(?:src|href)="([^"#:]+)"', (DASHBOARD / "index.html").read_text())
    paths = ["/", *(f"/{asset}" for asset in assets), "/docs", "/docs-assets/swagger-ui-bundle.js", "/v1/version"]
    responses = asyncio.run(served(paths))
    missing += [f"GET {path}: {response.status_code}" for path, response in zip(paths, responses, strict=True)
                if response.status_code != 200]
    if responses[-1].json() != {"version": __version__}:
        missing.append(f"/v1/version: {responses[-1].text}, not {__version__}")
    print(f"heavy {__version__}: {len(assets)} dashboard assets")
    return missing


if __name__ == "__main__":
    problems = main()
    print("\n".join(problems))
    sys.exit(1 if problems else 0)
