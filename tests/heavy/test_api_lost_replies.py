"""API requests whose Redis script ran but whose reply the network lost (a loopback proxy, tests/heavy/redis_proxy.py,
closes the connection before passing it on), so that redis-py sent the script again: each request answers as the
script's first run did, not as a second run finding its own effect (an approval 409, a deletion 404, a job's
callback left to a sweep)."""

import contextlib
import hashlib

import pytest

from heavy.store import Keys, Store, scripts
from tests.heavy.api_helpers import SETTINGS, app_for, client_for
from tests.heavy.redis_proxy import RedisProxy
from tests.heavy.test_webhooks import Receiver
from tests.heavy.worker_helpers import JOB, wait_for

pytestmark = pytest.mark.anyio


def run_of(script: str) -> bytes:
    """What a run of `script` is sent as (EVALSHA and its SHA-1), to lose its reply."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


@contextlib.asynccontextmanager
async def api_through_proxy(tmp_path_factory, redis_server, key_prefix, settings=SETTINGS):
    """(network, store, client): the API over a store that reaches Redis through the proxy, with a tenant's key."""
    async with RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", redis_server.socket_path) as network:
        store = Store.connect(network.url, settings, Keys(key_prefix))
        try:
            for script in (scripts.APPROVE, scripts.DELETE, scripts.CLAIM_CALLBACK):  # the lost reply is a run's
                await store.redis.script_load(script)
            key = await store.tenants.create_key("acme")
            async with client_for(app_for(store, settings), key.secret) as client:
                yield network, store, client
        finally:
            await store.aclose()


async def test_an_approval_whose_reply_was_lost_answers_the_job_queued_once(tmp_path_factory, redis_server,
                                                                            key_prefix):
    async with api_through_proxy(tmp_path_factory, redis_server, key_prefix) as (network, store, client):
        job = (await client.post("/v1/jobs", json={**JOB, "review": True})).json()
        network.lose_reply_to = run_of(scripts.APPROVE)
        approved = await client.post(f"/v1/jobs/{job['id']}/approve")
        queued = [fields["job"] for _, fields in await store.redis.xrange(store.queue.keys.jobs_stream)]
    assert network.lose_reply_to is None  # the reply was lost
    assert approved.status_code == 200, approved.json()  # not 409: "not awaiting approval"
    assert approved.json()["status"] == "queued"
    assert queued == [job["id"]]


async def test_a_deletion_whose_reply_was_lost_answers_204(tmp_path_factory, redis_server, key_prefix):
    async with api_through_proxy(tmp_path_factory, redis_server, key_prefix) as (network, store, client):
        job = (await client.post("/v1/jobs", json=JOB)).json()
        await client.post(f"/v1/jobs/{job['id']}/cancel")
        network.lose_reply_to = run_of(scripts.DELETE)
        deleted = await client.delete(f"/v1/jobs/{job['id']}")
        after = await client.get(f"/v1/jobs/{job['id']}")
    assert network.lose_reply_to is None
    assert (deleted.status_code, after.status_code) == (204, 404)


async def test_a_callback_claim_whose_reply_was_lost_sends_the_callback_now(tmp_path_factory, redis_server,
                                                                             key_prefix):
    """Refused as a claim someone else holds, the callback waited for a worker's sweep after the claim's lease."""
    hook = Receiver()
    settings = SETTINGS.model_copy(update={"webhook_allow": (hook.allow,)})
    try:
        async with api_through_proxy(tmp_path_factory, redis_server, key_prefix, settings) as (network, store,
                                                                                               client):
            job = (await client.post("/v1/jobs", json={**JOB, "callback_url": hook.url})).json()
            network.lose_reply_to = run_of(scripts.CLAIM_CALLBACK)
            await client.post(f"/v1/jobs/{job['id']}/cancel")  # a queued job: the API sends its callback

            async def sent() -> str:
                status = (await store.jobs.get(job["id"])).callback_status
                return status if status.startswith("delivered") else ""
            status = await wait_for(sent, timeout_s=10)
    finally:
        hook.close()
    assert network.lose_reply_to is None
    assert status == "delivered: HTTP 200 after 1 attempt(s)" and len(hook.received) == 1
