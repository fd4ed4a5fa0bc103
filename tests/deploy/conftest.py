"""Paths of the deploy files under test, and deploy/sizing.py as a module."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY


@pytest.fixture(scope="session")
def sizing():
    spec = importlib.util.spec_from_file_location("sizing", DEPLOY / "sizing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sizing"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
