"""Moving a job store between a single redis-server and a Redis Cluster, whose key names differ by the prefix's hash
tag (heavy/store/migrate.py, `heavy store migrate`): jobs in every state arrive readable and workable, the queue's
consumer group with its pending entry, expiry kept, the page cache left behind, and the target's keys never
overwritten unless asked; refused while the source's workers are at work, or when a Redis refuses DUMP or RESTORE."""

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heavy.cli import app
from heavy.config import Settings, get_settings
from heavy.embedded_redis import EmbeddedRedis, find_redis_server, ping
from heavy.store import Keys, Store
from heavy.store.connection import redis_client
from heavy.store.keys import GROUP
from heavy.store.migrate import MigrationRefused, migrate
from heavy.store.records import AWAITING_APPROVAL, DONE, QUEUED, RUNNING
from tests.processes import stop_process

pytestmark = pytest.mark.anyio
SETTINGS = Settings(tenant_max_jobs=8)
CALLBACK = "http://receiver.example/hook"


@pytest.fixture
def fresh_server(tmp_path):
    """A redis-server of this test's own: the CLI moves the store under its fixed `heavy:` prefix."""
    servers = []

    def start() -> EmbeddedRedis:
        servers.append(EmbeddedRedis(tmp_path / f"redis{len(servers)}").start())
        return servers[-1]
    yield start
    for server in servers:
        server.stop()


async def submit(store, **kwargs):
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 2}, **kwargs)
    return job


async def jobs_in_every_state(store) -> dict[str, str]:
    """Running (claimed by w1, pending in the group, with events and checkpoints), done (report, events, callback
    not sent), queued (not yet delivered) and held for review; job ids by state."""
    await store.queue.ensure_group()
    running, done = await submit(store), await submit(store, callback_url=CALLBACK)
    claims = await store.queue.claim_new("w1", count=2)
    assert [claim.job_id for claim in claims] == [running.id, done.id]
    await store.jobs.update(running.id, status=RUNNING, worker="w1")
    await store.jobs.append_event(running.id, {"type": "job_started"}, owner="w1")
    await store.jobs.save_checkpoint(running.id, 1, {"log": "a", "steps": [1, 2]}, owner="w1")
    await store.jobs.save_checkpoint(running.id, 1, {"log": "a", "at": {"steps": 2}, "append": {"steps": [3]}},
                                     owner="w1")
    await store.jobs.append_event(done.id, {"type": "job_started"})
    await store.jobs.finish(done, DONE, event={"type": "job_done"}, report=("# Report", {"answer": "blue"}))
    await store.queue.ack(claims[1].entry_id)
    queued, held = await submit(store), await submit(store, review=True)
    return {"running": running.id, "done": done.id, "queued": queued.id, "held": held.id}


async def move(source_url, source_keys, target_url, target_keys, **options):
    """`migrate`, forced: the stores these tests build hold claims made a moment ago, which look like a live worker's
    (the check has a test of its own)."""
    source, target = redis_client(source_url), redis_client(target_url)
    try:
        return await migrate(source, source_keys, target, target_keys, lease_s=SETTINGS.worker_lease_s, force=True,
                             **options)
    finally:
        await source.aclose()
        await target.aclose()


async def assert_same_store(before: Store, after: Store, ids: dict[str, str]) -> None:
    """Everything a reader of the store sees is the same on both."""
    listed = await before.jobs.list("acme", limit=50)
    assert await after.jobs.list("acme", limit=50) == listed and listed[1] == 4
    for status in (QUEUED, RUNNING, AWAITING_APPROVAL, DONE):
        assert await after.jobs.list("acme", statuses={status}) == await before.jobs.list("acme", statuses={status})
    for job_id in ids.values():
        assert await after.jobs.read_events(job_id) == await before.jobs.read_events(job_id)
        assert await after.jobs.get_report(job_id) == await before.jobs.get_report(job_id)
        assert await after.jobs.load_checkpoints(job_id, 2) == await before.jobs.load_checkpoints(job_id, 2)
    assert await after.tenants.list_keys("acme") == await before.tenants.list_keys("acme")
    stream = before.jobs.keys.jobs_stream, after.jobs.keys.jobs_stream
    assert await after.redis.xrange(stream[1]) == await before.redis.xrange(stream[0])
    assert await after.redis.xinfo_groups(stream[1]) == await before.redis.xinfo_groups(stream[0])
    assert [(entry["message_id"], entry["consumer"]) for entry in
            await after.redis.xpending_range(stream[1], GROUP, "-", "+", 10)] == \
        [(entry["message_id"], entry["consumer"]) for entry in
         await before.redis.xpending_range(stream[0], GROUP, "-", "+", 10)]


async def test_a_store_moved_to_a_cluster_and_back_keeps_every_job_and_can_go_on(redis_server, redis_cluster,
                                                                                  fresh_server, key_prefix):
    source = Store.connect(redis_server.url, SETTINGS, Keys(key_prefix))
    on_cluster = Store.connect(redis_cluster.url, SETTINGS, Keys(key_prefix))  # its keys tagged `p:{p}:`
    back = fresh_server()
    on_server = Store.connect(back.url, SETTINGS, Keys(key_prefix))
    try:
        ids = await jobs_in_every_state(source)
        key = await source.tenants.create_key("acme", "ci")
        await source.redis.set(source.jobs.keys.page("http://cached.example/"), "a page", px=60_000)
        plain, tagged = Keys(key_prefix), Keys(key_prefix).on_one_slot()

        dry = await move(redis_server.url, plain, redis_cluster.url, tagged, dry_run=True)
        assert (dry.kinds["job"], dry.kinds["job events"], dry.kinds["job report"], dry.kinds["job checkpoint"],
                dry.kinds["jobs"], dry.kinds["api key"], dry.existing, dry.copied) == (4, 2, 1, 2, 1, 1, [], 0)
        assert "page" not in dry.kinds  # a cache
        assert not [name async for name in on_cluster.redis.scan_iter(match=f"{key_prefix}*")]

        moved = await move(redis_server.url, plain, redis_cluster.url, tagged)
        assert moved.copied == dry.keys
        await assert_same_store(source, on_cluster, ids)
        assert await on_cluster.tenants.resolve(key.secret) == "acme"
        assert await on_cluster.redis.smembers(tagged.tenants) == {"acme"}  # what the workers' retention sweep walks
        retention_ms = await on_cluster.redis.pttl(tagged.job(ids["done"]))
        assert 0 < retention_ms <= await source.redis.pttl(plain.job(ids["done"])) + 1_000  # expiry kept
        assert await on_cluster.redis.pttl(tagged.job(ids["queued"])) == -1
        assert ids["done"] in await on_cluster.jobs.due_callbacks()
        assert not await on_cluster.redis.exists(tagged.page("http://cached.example/"),
                                                 plain.page("http://cached.example/"))

        with pytest.raises(MigrationRefused, match=r"already holds (\d+) of the \1 keys .*--replace"):
            await move(redis_server.url, plain, redis_cluster.url, tagged)
        replaced = await move(redis_server.url, plain, redis_cluster.url, tagged, replace=True)
        # the same keys again: the held job's submit already wrote the checked-since key the filtered lists read
        assert replaced.copied == moved.copied

        # the cluster takes over: a new worker takes over the running job (its worker was stopped for the move)
        # and finds its checkpoints, claims the queued job, and the held one once approved
        takeover = await on_cluster.queue.claim_abandoned("w2", lease_ms=0)
        assert [claim.job_id for claim in takeover] == [ids["running"]]
        assert await on_cluster.jobs.load_checkpoints(ids["running"], 2) == {1: {"log": "a", "steps": [1, 2, 3]}}
        assert [claim.job_id for claim in await on_cluster.queue.claim_new("w2", block_ms=10)] == [ids["queued"]]
        assert (await on_cluster.jobs.approve(ids["held"], "acme")).status == QUEUED
        assert [claim.job_id for claim in await on_cluster.queue.claim_new("w2", block_ms=10)] == [ids["held"]]

        on_cluster_now = [name async for name in on_cluster.redis.scan_iter(match=f"{tagged.prefix}*")]
        assert (await move(redis_cluster.url, tagged, back.url, plain)).copied == len(on_cluster_now)
        await assert_same_store(on_cluster, on_server, ids)
        assert await on_server.queue.pending() == 3  # the three jobs w2 runs
    finally:
        for store in (source, on_cluster, on_server):
            await store.aclose()


def test_heavy_store_migrate_counts_copies_and_refuses_to_overwrite_in_one_line(fresh_server, monkeypatch):
    source, target = fresh_server(), fresh_server()
    monkeypatch.setenv("HEAVY_REDIS_URL", source.url)  # --from's default
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        created = runner.invoke(app, ["keys", "create", "acme"])
        assert created.exit_code == 0, created.output
        dry = runner.invoke(app, ["store", "migrate", "--to", target.url, "--dry-run"])
        copied = runner.invoke(app, ["store", "migrate", "--to", target.url])
        again = runner.invoke(app, ["store", "migrate", "--from", source.url, "--to", target.url])
        unreachable = runner.invoke(app, ["store", "migrate", "--to", "redis+cluster://127.0.0.1:1"])
        bad_url = runner.invoke(app, ["store", "migrate", "--to", "redis+cluster://a:port"])
    finally:
        get_settings.cache_clear()
    assert dry.exit_code == 0 and "dry run: 4 keys to copy, 0 of them already on the target" in dry.stdout, dry.output
    assert copied.exit_code == 0 and "copied 4 keys" in copied.stdout, copied.output
    assert again.exit_code == 1 and "already holds 4 of the 4 keys" in again.stderr, again.output
    assert "cannot reach the target Redis" in unreachable.stderr
    for failed in (again, unreachable, bad_url):
        assert failed.exit_code == 1 and failed.stderr.startswith("error: ") and "Traceback" not in failed.output
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def store_keys_on(url: str) -> list[str]:
    async def scan() -> list[str]:
        redis = redis_client(url)
        try:
            return [name async for name in redis.scan_iter()]
        finally:
            await redis.aclose()
    return asyncio.run(scan())


def test_heavy_store_migrate_refuses_while_the_sources_workers_are_at_work_unless_forced(fresh_server, monkeypatch):
    """A worker that polled the queue and a job claimed within the lease are a service still running: the move is
    refused in one line naming them, a dry run warns, --force copies; once they are idle past the lease (the worker
    stopped) it goes ahead."""
    source, target, later = fresh_server(), fresh_server(), fresh_server()
    lease_s = 0.5

    async def a_worker_claims_a_job() -> str:
        store = Store.connect(source.url, SETTINGS)
        try:
            await store.queue.ensure_group()
            job = await submit(store)
            assert [claim.job_id for claim in await store.queue.claim_new("w-live", block_ms=10)] == [job.id]
            return job.id
        finally:
            await store.aclose()

    job_id = asyncio.run(a_worker_claims_a_job())
    monkeypatch.setenv("HEAVY_REDIS_URL", source.url)
    monkeypatch.setenv("HEAVY_WORKER_LEASE_S", "3600")  # what a worker did a moment ago is within it
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        refused = runner.invoke(app, ["store", "migrate", "--to", target.url])
        dry = runner.invoke(app, ["store", "migrate", "--to", target.url, "--dry-run"])
        assert store_keys_on(target.url) == []
        forced = runner.invoke(app, ["store", "migrate", "--to", target.url, "--force"])
        monkeypatch.setenv("HEAVY_WORKER_LEASE_S", str(lease_s))
        get_settings.cache_clear()
        while not all(consumer["idle"] >= lease_s * 1000 for consumer in asyncio.run(consumers(source.url))):
            time.sleep(0.05)  # the worker stopped: its consumer and its job's entry age past the lease
        stopped = runner.invoke(app, ["store", "migrate", "--to", later.url])
    finally:
        get_settings.cache_clear()
    assert refused.exit_code == 1 and refused.stderr.startswith("error: ") and "Traceback" not in refused.output
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    for said in ("1 worker(s) active on the queue: w-live", f"1 running job(s) with a fresh lease: {job_id} on w-live",
                 "--force"):
        assert said in refused.stderr, refused.stderr
    assert dry.exit_code == 0 and "warning: the source store is in use: 1 worker(s)" in dry.stderr, dry.output
    assert forced.exit_code == 0 and "copied 6 keys" in forced.stdout and "in use" in forced.stderr, forced.output
    assert stopped.exit_code == 0 and "copied 6 keys" in stopped.stdout and "in use" not in stopped.stderr, \
        stopped.output


async def consumers(url: str) -> list[dict]:
    redis = redis_client(url)
    try:
        return await redis.xinfo_consumers(Keys().jobs_stream, GROUP)
    finally:
        await redis.aclose()


@pytest.fixture
def restricted_server():
    """A redis-server whose config renames commands away (`rename-command X ""`), as managed services do."""
    started = []

    def start(*commands: str) -> str:
        directory = Path(tempfile.mkdtemp(prefix="heavy-restricted-"))  # short: a socket path has 108 bytes
        config = directory / "redis.conf"
        config.write_text("".join(f'rename-command {command} ""\n' for command in commands))
        socket = str(directory / "redis.sock")
        process = subprocess.Popen([find_redis_server(), str(config), "--port", "0", "--unixsocket", socket,
                                    "--dir", str(directory), "--save", "", "--appendonly", "no"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        while not ping(socket):
            assert process.poll() is None, "redis-server did not start"
            time.sleep(0.02)
        return f"unix://{socket}"
    yield start
    for process in started:
        stop_process(process)


def test_heavy_store_migrate_names_a_dump_or_restore_the_redis_refuses_and_copies_nothing(fresh_server,
                                                                                         restricted_server,
                                                                                         monkeypatch):
    source, target = fresh_server(), fresh_server()
    no_restore, no_dump = restricted_server("RESTORE"), restricted_server("DUMP")
    monkeypatch.setenv("HEAVY_REDIS_URL", source.url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        assert runner.invoke(app, ["keys", "create", "acme"]).exit_code == 0
        onto = runner.invoke(app, ["store", "migrate", "--to", no_restore])
        assert runner.invoke(app, ["store", "migrate", "--to", no_dump]).exit_code == 0  # only as a target
        off = runner.invoke(app, ["store", "migrate", "--from", no_dump, "--to", target.url])
    finally:
        get_settings.cache_clear()
    assert "the target Redis refused RESTORE (unknown command 'RESTORE')" in onto.stderr, onto.output
    assert "the source Redis refused DUMP (unknown command 'DUMP')" in off.stderr, off.output
    for failed in (onto, off):
        assert failed.exit_code == 1 and failed.stderr.startswith("error: ") and "Traceback" not in failed.output
        assert "nothing was copied" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert store_keys_on(no_restore) == [] and store_keys_on(target.url) == []
