"""The dashboard in real Chromium behind a proxy that serves the API under a prefix and strips it (the API started
with HEAVY_API_ROOT_PATH, as the README says): sign-in, the job list, a job's page and its event stream all work
there, and the page asks for nothing outside the prefix."""

import asyncio

import httpx
import pytest
import uvicorn

from tests.net import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

PREFIX = "/research"
HOP_BY_HOP = {b"host", b"connection", b"transfer-encoding", b"keep-alive"}  # each hop sets its own


def stripping_proxy(upstream: str):
    """An ASGI app passing each request under PREFIX on to `upstream` without the prefix, streamed both ways (an
    event stream goes through as it comes); PREFIX itself is passed on as `/`, as Traefik's StripPrefix or an
    ingress's rewrite does; anything else is a 404, as outside a proxy's location."""
    client = httpx.AsyncClient(base_url=upstream, timeout=None)

    async def app(scope, receive, send) -> None:
        path = scope["raw_path"].decode()
        if path != PREFIX and not path.startswith(f"{PREFIX}/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            return await send({"type": "http.response.body", "body": b"outside the prefix"})
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        query = scope["query_string"].decode()
        passed_on = (path.removeprefix(PREFIX) or "/") + (f"?{query}" if query else "")
        request = client.build_request(scope["method"], passed_on,
                                       headers=[(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP],
                                       content=body)
        response = await client.send(request, stream=True)
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return app


@pytest.fixture
async def proxy(service):
    """The proxy on a loopback port in front of the service's API, which is restarted under PREFIX; its URL."""
    await service.start_api_again(env={"HEAVY_API_ROOT_PATH": PREFIX})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stripping_proxy(service.url), host="127.0.0.1", port=port,
                                           lifespan="off", log_level="warning", timeout_graceful_shutdown=1))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "the proxy did not start"
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


async def test_sign_in_list_and_a_followed_job_under_the_proxys_prefix(service, proxy, page, store):
    asked = []
    page.on("request", lambda request: asked.append(request.url))
    key = await store.tenants.create_key("acme")
    await page.goto(f"{proxy}{PREFIX}/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#submit-form", state="visible")

    await page.fill("#question", "Which module parses command-line options?")
    await page.fill("#trajectories", "2")
    await page.fill("#max-steps", "4")
    await page.fill("#step-tokens", "128")
    await page.select_option("#mode", "report")
    await page.click("#submit-form button")
    await page.wait_for_selector("#lane-1")  # the job's page, its lanes drawn from the event stream
    await page.wait_for_selector("#report:not([hidden])", timeout=60_000)
    assert await page.locator(".lane.done").count() == 2 and await page.text_content("#job-status") == "done"
    (job,), _ = await store.jobs.list("acme")
    view = page.locator("#job-view")
    assert await view.get_attribute("data-last-event") == str((await store.jobs.get(job.id)).events)

    await page.click("a[href='#/']")  # the list
    await page.wait_for_selector(f"#jobs tbody tr[data-id='{job.id}'] td.status-done")
    events = f"{proxy}{PREFIX}/v1/jobs/{job.id}/events"
    assert events in asked and f"{proxy}{PREFIX}/style.css" in asked
    assert [url for url in asked if not url.startswith(f"{proxy}{PREFIX}/")] == []


async def test_the_prefix_without_its_slash_opens_the_dashboard_at_the_prefix_with_it(proxy, page):
    """The proxy passes `/` on for both, so only the page knows which the browser asked for: at the prefix without
    its slash, its relative URLs (app.js, v1/...) would resolve outside the prefix."""
    await page.goto(f"{proxy}{PREFIX}?from=bookmark#/")
    await page.wait_for_selector("#sign-in-form", state="visible")  # app.js loaded and ran
    assert page.url == f"{proxy}{PREFIX}/?from=bookmark#/"
    await page.goto(f"{proxy}{PREFIX}/index.html")  # the page by its name: already under the prefix, not moved
    await page.wait_for_selector("#sign-in-form", state="visible")
    assert page.url == f"{proxy}{PREFIX}/index.html"
