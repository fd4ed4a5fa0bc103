"""The service's Prometheus metrics as an SRE scrapes them: every ended job is counted once, whichever process ended
it."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.heavy.api_helpers import app_for, client_for
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, wait_for

pytestmark = pytest.mark.anyio


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample of a /metrics text (0 when it has none yet)."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return 0.0


@pytest.fixture
async def acme(store):
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
        yield client


async def has_status(client, job_id: str, status: str) -> bool:
    return (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == status


async def test_jobs_ended_without_a_worker_count_as_finished_once(acme, store):
    """A queued or held job cancelled through the API, and a held one whose approval ran out, end with no worker:
    they count in heavy_jobs_finished_total as a worker's jobs do (submitted minus finished is what is active), and
    a repeated cancel counts nothing more."""
    async def cancelled() -> float:
        return sample((await acme.get("/metrics")).text, "heavy_jobs_finished_total", status="cancelled")

    start = await cancelled()
    queued = (await acme.post("/v1/jobs", json=JOB)).json()
    held = (await acme.post("/v1/jobs", json={**JOB, "review": True})).json()
    for job in (queued, held, queued):
        assert (await acme.post(f"/v1/jobs/{job['id']}/cancel")).json()["status"] == "cancelled"
    assert await cancelled() - start == 2
    store.jobs.approval_window_s = 0.05
    expiring = (await acme.post("/v1/jobs", json={**JOB, "review": True})).json()
    await wait_for(lambda: store.jobs.expire_unapproved())  # what a worker's sweep does
    assert await has_status(acme, expiring["id"], "cancelled") and await cancelled() - start == 3
