"""The dashboard's files as a browser caches them."""

import pytest

from heavy.api.middleware import DASHBOARD
from tests.heavy.api_helpers import app_for, client_for

pytestmark = pytest.mark.anyio


async def test_every_dashboard_file_is_revalidated_before_use_and_answers_304_unchanged(store):
    # its ES modules import each other by fixed names: a stale module kept by the browser's heuristic cache beside a
    # new one after an upgrade broke the page
    names = sorted(path.name for path in DASHBOARD.iterdir() if path.suffix in {".html", ".js", ".css"})
    assert "app.js" in names and "index.html" in names
    async with client_for(app_for(store), None) as anonymous:
        for name in names:
            served = await anonymous.get(f"/{name}")
            assert served.status_code == 200 and served.headers["cache-control"] == "no-cache", name
            again = await anonymous.get(f"/{name}", headers={"If-None-Match": served.headers["etag"]})
            assert again.status_code == 304, name
        assert (await anonymous.get("/")).headers["cache-control"] == "no-cache"
