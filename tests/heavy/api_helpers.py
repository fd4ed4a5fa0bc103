"""Shared pieces of the API tests: an app over the test's store, a client per tenant, SSE parsing."""

from __future__ import annotations

import json

import httpx

from heavy.api import create_app
from heavy.config import Settings

SETTINGS = Settings(tenant_max_jobs=3, max_request_bytes=4096, context_tokens=2048)


def app_for(store, settings: Settings = SETTINGS):
    return create_app(settings, store=store)


def client_for(app, api_key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://heavy.test", headers=headers)


def parse_sse(text: str) -> list[dict]:
    """The `id`/`event`/`data` of each event in an SSE body (comments and pings skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields.get("event"), "data": json.loads(fields["data"])})
    return events


async def follow_sse(url: str, headers: dict, received: list[dict]) -> None:
    """Follow an API process's SSE stream at `url` until it ends or the connection drops; append every event."""
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        block: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(":")
                block[name] = value.removeprefix(" ")
            elif "data" in block:
                received.append({"id": int(block["id"]), **json.loads(block["data"])})
                block = {}


async def blocked_event_reads(store) -> int:
    """How many of the server's clients wait in a blocking XREAD now (a worker's job claims are XREADGROUPs)."""
    return sum(client["cmd"] == "xread" and "b" in client["flags"] for client in await store.redis.client_list())
