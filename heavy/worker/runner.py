"""The worker: claims jobs from the consumer group, runs each with the scheduler, and writes events, checkpoints,
the report and the final status to Redis.

Leases: while a job runs, the worker keeps resetting its entry's idle time; an entry idle past the lease belongs
to a dead worker, and any worker claims it (XAUTOCLAIM) and resumes the job from its checkpoints. An outage that cut
every worker off from Redis does not run a lease down (heavy/store/scripts.py CLAIM_ABANDONED). Control
requests (cancel, finish now) are polled from the job hash several times a second. A stopping worker leaves its
jobs unacknowledged, so they are resumed too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import asdict

from redis.exceptions import ResponseError

from heavy.aggregate import AggregationConfig, JobResult
from heavy.compat import from_known_fields
from heavy.config import Settings
from heavy.events import FanoutSink, JobFailed, SinkUnreachable
from heavy.llm.types import LLMBackend, Usage
from heavy.logs import log_about, logging_about
from heavy.metrics import ERRORS, JOB_SECONDS, MetricsSink, served
from heavy.scheduler import JobControl, JobSpec, Scheduler, trajectory_limits
from heavy.store import Claim, InvalidTransition, JobNotFound, JobRecord, JobTakenOver, Store
from heavy.store.records import AGGREGATING, CANCELLED, FAILED, QUEUED, RUNNING
from heavy.tools.base import ToolExecutor
from heavy.worker.callbacks import Callbacks
from heavy.worker.checkpoint import SPENT_SAVE_TIMEOUT_S, CheckpointedTrajectory
from heavy.worker.sink import RedisEventSink, store_unreachable

log = logging.getLogger(__name__)

CONTROL_POLL_S = 0.2  # cancel is honoured within a second
CLAIM_BLOCK_MS = 500
CLAIM_RETRY_S = 1.0  # how soon a worker whose claim failed (Redis down) tries again
SWEEP_S = 5.0  # how often a worker looks for callbacks whose sender died, approvals and retentions run out and
# workers gone
GONE_WORKER_S = 600.0  # a queue consumer idle this long with nothing pending is a stopped worker's (a live one polls)
MAX_ATTEMPTS = 3


def job_spec(job: JobRecord, settings: Settings, tools: frozenset[str], tokens_left: int, *, now: float) -> JobSpec:
    """The scheduler's spec from the job's stored parameters; the job may not spend more than its tenant has. A job
    resumed after a takeover keeps its deadlines: they count from when it first started (`started` and `now` on
    Redis's clock, so a worker whose clock differs from the first one's neither cuts nor stretches them)."""
    p = job.params
    limits = trajectory_limits(settings, max_steps=p["max_steps"], step_tokens=p["step_tokens"],
                               total_tokens=p["trajectory_tokens"], deadline_s=p["deadline_s"])
    return JobSpec.from_settings(settings, job_id=job.id, question=job.question, mode=job.mode,
                                 trajectories=p["trajectories"], allowed_tools=frozenset(p["tools"]) & tools,
                                 limits=limits, job_tokens=max(1, min(p["job_tokens"], tokens_left)),
                                 deadline_s=p["deadline_s"], priority=p.get("priority", 0),
                                 elapsed_s=max(0.0, now - job.started) if job.started else 0.0,
                                 earlier_usage=from_known_fields(Usage, job.earlier_usage))


def checkpointed_usage(saved: dict[int, dict]) -> Usage:
    """What the checkpointed steps of a job's trajectories spent (the dead workers' attempts included)."""
    usages = [data["result"]["usage"] if data["kind"] == "result" else data["usage"] for data in saved.values()]
    return sum((from_known_fields(Usage, usage) for usage in usages), Usage())


def raise_lost_cancel() -> None:
    """Raise the cancel this task was sent and lost. Python 3.11's asyncio.wait_for returns its awaitable's result
    and drops a cancel that arrives as the awaitable completes (CPython gh-86296, fixed in 3.12): the task runs on,
    `cancelling()`. Redis commands re-raise theirs (heavy/store/connection.py, `_KeepsCancels`), so only the claim
    loop, which waits on its stop event under wait_for, calls this each round."""
    if asyncio.current_task().cancelling():
        raise asyncio.CancelledError


class Worker:
    def __init__(self, store: Store, backend: LLMBackend, executor: ToolExecutor, settings: Settings, *,
                 name: str | None = None, aggregation: AggregationConfig | None = None) -> None:
        self.store, self.backend, self.executor, self.settings = store, backend, executor, settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.aggregation = aggregation or AggregationConfig.from_settings(settings)
        self.running: dict[str, asyncio.Task] = {}  # stream entry id -> job task
        self.job_ids: dict[str, str] = {}  # stream entry id -> its job's, for the lines logged about the entry
        self.acked: set[str] = set()  # entries of `running` acknowledged (their task ending): no lease
        self.callbacks = Callbacks(store.jobs, settings)  # ended jobs' callbacks, out beside the jobs' slots
        self.stopping = False  # set when run() is asked to stop: its jobs' tasks are cancelled by a stop, not a death
        self.lease_ms = int(settings.worker_lease_s * 1000)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Claim and run jobs until `stop` is set; running jobs are then left to be resumed. A Redis unreachable at the
        start is waited for as the claim loop waits for it: a worker pod started during an outage does not exit."""
        stop = stop or asyncio.Event()
        async with served(self.settings.api_host, self.settings.worker_metrics_port):
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        renewer = asyncio.create_task(self._renew_leases(stop))
        sweeper = asyncio.create_task(self._sweep(stop))
        log.info("worker %s started", self.name)
        failing = False  # the claims failing since the last that went through: an outage is logged once
        try:
            while not stop.is_set():
                raise_lost_cancel()
                free = self.settings.worker_jobs - len(self.running)
                if free <= 0:
                    await asyncio.wait([*self.running.values()], timeout=CLAIM_BLOCK_MS / 1000,
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    claims = await self._claim(free)
                except Exception as exc:  # Redis down past the store's retries: keep the worker alive
                    log.log(logging.DEBUG if failing else logging.WARNING, "claiming jobs failed (%s: %s); trying "
                            "again every %g s until Redis answers", type(exc).__name__, exc, CLAIM_RETRY_S)
                    failing = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), CLAIM_RETRY_S)
                    continue
                if failing:
                    log.info("claiming jobs again: Redis answers")
                    failing = False
                for claim in claims:
                    if claim.entry_id in self.running:  # our own job, idle while this loop stalled: keep running
                        continue
                    task = asyncio.create_task(self._handle(claim), name=f"job {claim.job_id}")
                    self.running[claim.entry_id] = task
                    self.job_ids[claim.entry_id] = claim.job_id
                    task.add_done_callback(lambda _, entry=claim.entry_id: self._forget(entry))
            self.stopping = True  # asked to stop (run() cancelled instead is taken for a death)
        finally:
            renewer.cancel()
            sweeper.cancel()
            for task in list(self.running.values()):
                task.cancel()
            await asyncio.gather(renewer, sweeper, *self.running.values(), return_exceptions=True)
            await self.callbacks.aclose()  # after the jobs' tasks, which start them: those cut off stay due
            log.info("worker %s stopped", self.name)

    async def _claim(self, count: int) -> list[Claim]:
        try:
            claims = await self.store.queue.claim_abandoned(self.name, lease_ms=self.lease_ms, count=count)
            return claims or await self.store.queue.claim_new(self.name, count=count, block_ms=CLAIM_BLOCK_MS)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        # no queue yet (a new store), or a Redis restarted without its data (no AOF): made here, where an outage is
        # waited for, then claimed from at once
        await self.store.queue.ensure_group()
        return []

    async def run_until_signalled(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """`run` until one of `signals` arrives (Kubernetes stops a pod with SIGTERM): the worker then stops
        claiming, aborts its jobs' in-flight model requests and tool calls and returns; the jobs, checkpointed after
        every step, stay unacknowledged and another worker resumes them once their lease ran out."""
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.run(stop)
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    async def _renew_leases(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.settings.worker_lease_s / 3)
            try:
                lost = await self.store.queue.renew(self.name, [e for e in self.running if e not in self.acked],
                                                    lease_ms=self.lease_ms)
            except Exception:  # a Redis hiccup must not end the renewals; the next round retries
                log.exception("lease renewal failed")
                continue
            for entry_id in lost:  # stalled past the lease: another worker runs the job now
                task = self.running.get(entry_id)
                if task is None or entry_id in self.acked:  # or acknowledged (its task maybe ended) while this
                    continue  # renewal was out: ours, done
                job_id = self.job_ids.get(entry_id)
                with logging_about(job_id=job_id):
                    log.warning("job %s was taken over by another worker (its queue entry %s); stopping our run of "
                                "it", job_id, entry_id)
                task.cancel()

    async def _sweep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if sent := await self.callbacks.send_due():
                    log.info("sending %d due callback(s) no process holds", sent)
                if expired := await self.store.jobs.expire_unapproved():
                    log.info("cancelled %d job(s) not approved in time", len(expired))
                await self.store.jobs.listing.drop_all_expired()
                if gone := await self.store.queue.forget_gone_workers(int(GONE_WORKER_S * 1000)):
                    log.info("forgot the queue consumers of %d stopped worker(s): %s", len(gone), ", ".join(gone))
            except Exception:  # a Redis hiccup: the next round looks again
                log.exception("sweep failed")
            await asyncio.sleep(SWEEP_S)

    async def _handle(self, claim: Claim) -> None:
        log_about(job_id=claim.job_id)  # this job's task, and the trajectories', tools' and callback's under it
        try:
            await self._run_job(claim)
        except asyncio.CancelledError:
            raise
        except Exception:  # the job stays pending: after the lease another worker (or this one) retries it
            ERRORS.labels("worker").inc()
            log.exception("job %s: worker error", claim.job_id)

    async def _run_job(self, claim: Claim) -> None:
        jobs = self.store.jobs
        try:
            job = await jobs.get(claim.job_id)
        except JobNotFound:
            await self._ack(claim.entry_id)
            return
        log_about(tenant=job.tenant)
        if job.terminal:
            await self._ack(claim.entry_id)
            return
        if job.attempts - job.stops >= MAX_ATTEMPTS:  # a job that kills every worker that runs it
            await self._give_up(claim, job)
            return
        now = await jobs.server_time()
        try:
            await jobs.update(job.id, allowed=(QUEUED, RUNNING, AGGREGATING), status=RUNNING, worker=self.name,
                              attempts=job.attempts + 1, started=job.started or now, updated=time.time())
        except (InvalidTransition, JobNotFound):  # cancelled (and maybe deleted) between the claim and now
            await self._ack(claim.entry_id)
            return
        control = JobControl()
        try:
            # read again now that it is ours: what its last worker wrote until this claim fenced it off (the spend a
            # worker stalled past its lease kept as it aggregated) is this attempt's to charge
            job = await jobs.get(job.id)
            if job.attempts > 1:
                log.info("job %s: resuming (attempt %d)", job.id, job.attempts)
            await self._run_attempt(claim, job, now, control)
        except asyncio.CancelledError:
            if self.stopping:  # stopped on purpose (SIGTERM): not a death
                with contextlib.suppress(Exception):  # else it counts: the job is only given up sooner
                    await asyncio.wait_for(self._record_stop(job, control), SPENT_SAVE_TIMEOUT_S)
            raise
        except Exception as exc:
            if not store_unreachable(exc):
                raise
            # Redis down past the store's retries, or refusing writes: the run stops, the job left unended to be
            # resumed from its checkpoints. Not a death either, but it cannot be recorded as a stop until Redis
            # takes writes again: this task waits for that, holding the entry (its lease renewed, and this worker's
            # claims pass it over), so a worker resuming the job sees the stop
            log.warning("job %s: Redis is not taking its writes (%s: %s); this run stops, to be resumed once it does",
                        job.id, type(exc).__name__, exc)
            await self._record_stop_once_back(job, control)

    async def _run_attempt(self, claim: Claim, job: JobRecord, now: float, control: JobControl) -> None:
        jobs = self.store.jobs
        tokens_left = job.token_grant  # reserved for it at submission (a held job's at approval)
        if not tokens_left:  # a job queued before grants existed: what its tenant has left
            tenant = await self.store.tenants.get(job.tenant)
            tokens_left = tenant.max_tokens - tenant.tokens_used
        spec = job_spec(job, self.settings, self.executor.names, tokens_left, now=now)
        saved = await jobs.load_checkpoints(job.id, spec.trajectories)
        run = asyncio.current_task()

        def taken_over(exc: JobTakenOver) -> None:  # a write refused: stop now, not at the next lease renewal
            log.warning("%s; stopping this worker's run of it", exc)
            run.cancel()

        sink = await RedisEventSink.open(jobs, job.id, owner=self.name, on_taken_over=taken_over)

        async def save_aggregation(spent: Usage) -> None:
            """What this attempt's aggregation spent so far, with what earlier attempts handed over, kept in the
            job after each aggregator call: a worker killed (or stalled past its lease) while aggregating loses at
            most its calls in flight, and the worker aggregating again charges the rest."""
            try:
                await sink.fenced(jobs.update(job.id, allowed=(RUNNING, AGGREGATING), owner=self.name,
                                              earlier_usage=asdict(spec.earlier_usage + spent)))
            except Exception as exc:  # Redis away a moment: the next save writes it all; a refusal stopped the run
                log.warning("job %s: what its aggregation spent is not saved (%s)", job.id, exc)

        control.save_aggregation = save_aggregation  # the sink it writes through is open now

        async def save(k: int, data: dict) -> None:
            await sink.fenced(jobs.save_checkpoint(job.id, k, data, owner=self.name))

        def trajectory(trajectory_spec, *args, **kwargs) -> CheckpointedTrajectory:
            return CheckpointedTrajectory(trajectory_spec, *args, save=save, saved=saved.get(trajectory_spec.index),
                                          **kwargs)

        scheduler = Scheduler(self.backend, self.executor, self.aggregation, trajectory_factory=trajectory)
        watcher = asyncio.create_task(self._watch_control(job.id, control))
        first_started = time.monotonic() - spec.elapsed_s  # a resumed job's time counts from before its takeover
        try:
            result = await scheduler.run(spec, sink=FanoutSink(sink, MetricsSink()), control=control)
        except SinkUnreachable:  # Redis down past the store's retries: left unended, resumed after the lease
            raise
        except Exception as exc:  # charged what earlier attempts checkpointed too, as a finished job's usage is
            error = f"{type(exc).__name__}: {exc}"
            if sink.terminal is None:  # failed before the scheduler's own handler (writing job_started)
                await sink.emit(JobFailed(job_id=job.id, error=error))
            # what the backends counted once the trajectories ended (failed and aborted requests, the aggregation's);
            # a job failed before that, its checkpoints' and this run's steps'
            spent = (control.spent if control.spent is not None else checkpointed_usage(saved) + sink.usage
                     ) + spec.earlier_usage
            await self._end(claim, job, FAILED, sink, tokens=spent.total_tokens, first_started=first_started,
                            error=error, cost_usd=self.aggregation.cost_usd(spent))
            return
        finally:
            watcher.cancel()
        await self._finish(claim, job, result, sink, first_started)

    async def _record_stop(self, job: JobRecord, control: JobControl) -> None:
        """Count this run as a stop, not a death (which giving the job up counts), and hand what its aggregation
        spent to the worker that runs the aggregation again, which charges it."""
        earlier = from_known_fields(Usage, job.earlier_usage) + control.aggregator_usage
        await self.store.jobs.update(job.id, allowed=(RUNNING, AGGREGATING), owner=self.name, stops=job.stops + 1,
                                     earlier_usage=asdict(earlier))

    async def _record_stop_once_back(self, job: JobRecord, control: JobControl) -> None:
        while True:
            try:
                await self._record_stop(job, control)
                return
            except (JobTakenOver, InvalidTransition, JobNotFound) as exc:  # taken over (the taker counted this
                log.warning("job %s: this run's stop not recorded: %s", job.id, exc)  # run), ended or deleted
                return
            except Exception as exc:
                if not store_unreachable(exc):
                    raise
            await asyncio.sleep(CLAIM_RETRY_S)

    async def _finish(self, claim: Claim, job: JobRecord, result: JobResult, sink: RedisEventSink,
                      first_started: float) -> None:
        tokens, cost = result.usage.total_tokens, result.cost_usd
        if result.status == CANCELLED:
            await self._end(claim, job, CANCELLED, sink, tokens=tokens, cost_usd=cost, first_started=first_started,
                            stop_reason="cancelled")
            return
        await self._end(claim, job, result.status, sink, tokens=tokens, cost_usd=cost, first_started=first_started,
                        stop_reason=result.stop_reason, report=(result.markdown, result.to_dict()))

    async def _end(self, claim: Claim, job: JobRecord, status: str, sink: RedisEventSink, *, tokens: int,
                   owner: str | None = None, first_started: float | None = None, **fields) -> None:
        """End the job if it is still `owner`'s (this worker's unless given): a run that stalled past its lease
        while another worker took the job over leaves it to that one, entry included. `first_started`: when the
        job first started, on time.monotonic(), for its wall time."""
        try:
            await self.store.jobs.finish(job, status, allowed=(QUEUED, RUNNING, AGGREGATING), tokens=tokens,
                                         event=sink.terminal, owner=self.name if owner is None else owner, **fields)
        except JobTakenOver as exc:
            log.warning("%s; dropping this worker's run of it", exc)
            return
        if first_started is not None:  # once a job, when it ends: not per run (a stopped or taken-over one)
            JOB_SECONDS.observe(time.monotonic() - first_started)
        if status == FAILED:  # its run's failure and a job given up alike, counted by the worker that ended it
            ERRORS.labels("job").inc()
        await self._ack(claim.entry_id)
        self.callbacks.send(job.id)  # not in this job's slot: a slow receiver holds neither it nor a lease
        log.info("job %s: %s (%d tokens)", job.id, status, tokens)

    async def _ack(self, entry_id: str) -> None:
        """Done with the entry: no renewal names it from now on, and one out now that Redis answers after the ack
        (the entry is no longer this worker's) is not taken for a takeover."""
        self.acked.add(entry_id)
        await self.store.queue.ack(entry_id)

    def _forget(self, entry_id: str) -> None:
        self.running.pop(entry_id, None)
        self.job_ids.pop(entry_id, None)
        self.acked.discard(entry_id)

    async def _give_up(self, claim: Claim, job: JobRecord) -> None:
        error = f"gave up after {job.attempts} attempts: {job.attempts - job.stops} workers running it died"
        sink = RedisEventSink(self.store.jobs, job.id)
        await sink.emit(JobFailed(job_id=job.id, error=error))
        spent = (checkpointed_usage(await self.store.jobs.load_checkpoints(job.id, job.trajectories))
                 + from_known_fields(Usage, job.earlier_usage))
        # still on the last dead worker's name, unless a live one took it meanwhile
        await self._end(claim, job, FAILED, sink, tokens=spent.total_tokens, owner=job.worker, error=error,
                        cost_usd=self.aggregation.cost_usd(spent))

    async def _watch_control(self, job_id: str, control: JobControl) -> None:
        finishing = False
        while True:
            await asyncio.sleep(CONTROL_POLL_S)
            with contextlib.suppress(Exception):  # transient Redis errors: look again next time
                request = (await self.store.jobs.get(job_id)).control
                if request == "cancel":
                    control.cancel()
                    return
                if request == "finish" and not finishing:
                    finishing = True
                    control.finish_now()
