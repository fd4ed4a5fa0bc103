"""heavy's version, where a user and a bug report look for it: `heavy --version`, the API's /v1/version (asked
without a key, as /openapi.json, which states it too) and the distribution's metadata (pyproject.toml reads it from
heavy.__version__)."""

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heavy import __version__
from heavy.cli import app
from tests.heavy.api_helpers import app_for, client_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_heavy_version_prints_it_and_runs_nothing():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"heavy {__version__}\n"


@pytest.mark.anyio
async def test_the_api_states_it_to_a_client_without_a_key(store):
    async with client_for(app_for(store), api_key=None) as anonymous:
        assert (await anonymous.get("/v1/version")).json() == {"version": __version__}
        assert (await anonymous.get("/openapi.json")).json()["info"]["version"] == __version__


def test_the_distribution_takes_it_from_the_package():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "heavy.__version__"}
