"""Property-based requests from the OpenAPI spec (schemathesis, bounded examples) against the API served by uvicorn
over real Redis: whatever the input, no 5xx response, and the response as the spec documents it (status, content
type, headers, body schema)."""

import asyncio
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from heavy.store import Keys, Store
from tests.heavy.worker_helpers import WORKER_SETTINGS
from tests.net import free_port

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def api_server(redis_server):
    prefix = f"s{uuid.uuid4().hex[:10]}:"

    async def create_key() -> str:
        store = Store.connect(redis_server.url, WORKER_SETTINGS, Keys(prefix))
        try:
            return (await store.tenants.create_key("fuzz")).secret
        finally:
            await store.aclose()

    key = asyncio.run(create_key())
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.heavy.service_proc", "api", redis_server.url, prefix,
                                str(port)])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    yield base, key
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def api_schema(api_server):
    base, _ = api_server
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


def test_no_server_errors(api_schema, api_server):
    # Each operation's strategy driven by hypothesis directly (schemathesis' pytest plugin predates pytest 9).
    base, key = api_server
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_5xx(case):
            case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {key}"},
                                   checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           response_schema_conformance, response_headers_conformance], timeout=10)
        no_5xx()
