"""The API's docs page, /docs, works with no internet: every asset it loads is served by the API."""

import re

import httpx
import pytest

from tests.heavy.api_helpers import app_for, client_for

pytestmark = pytest.mark.anyio

ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def _loaded_urls(html: str) -> list[str]:
    """What the docs page loads: its script, stylesheet and icon, and the spec its script fetches."""
    return re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url: '([^']*)'", html)


async def test_the_docs_page_loads_only_what_the_api_serves(store):
    async with client_for(app_for(store), None) as anonymous:
        page = await anonymous.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text and "https://" not in page.text  # was cdn.jsdelivr.net's swagger-ui
        loaded = _loaded_urls(page.text)
        assert "/openapi.json" in loaded and {url.rsplit(".", 1)[-1] for url in loaded} == {"js", "css", "json", "png"}
        for url in loaded:
            assert url.startswith("/") and not url.startswith("//"), url
            asset = await anonymous.get(url)
            assert asset.status_code == 200, url
            kind = next((kind for suffix, kind in ASSET_TYPES.items() if url.endswith(suffix)), "application/json")
            assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert (await anonymous.get("/redoc")).status_code == 404  # ReDoc's page loads a logo from a CDN


@pytest.mark.browser
@pytest.mark.slow
async def test_the_docs_page_shows_the_operations_with_no_request_off_the_machine(service, page):
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(service.url + "/docs")
    await page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}/report").first.wait_for()
    assert await page.locator(".opblock").count() >= 5
    assert requested and all(url.startswith(service.url + "/") for url in requested), requested


async def test_the_docs_page_under_a_root_path_runs_its_script_as_at_the_root(store):
    # served under a prefix (uvicorn --root-path: the request's path keeps it), /docs got the dashboard's policy,
    # which refuses Swagger UI's inline script: a blank page
    transport = httpx.ASGITransport(app=app_for(store), root_path="/heavy")
    async with httpx.AsyncClient(transport=transport, base_url="http://heavy.test") as anonymous:
        page = await anonymous.get("/heavy/docs")
        assert page.status_code == 200 and "/heavy/docs-assets/swagger-ui-bundle.js" in page.text
        assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
        dashboard = await anonymous.get("/heavy/")
        assert "script-src 'self'" in dashboard.headers["content-security-policy"]
