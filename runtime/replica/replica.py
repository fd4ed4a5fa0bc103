"""A replica: EP rank actors in one placement group, driven in lock-step behind an engine-like interface.

`generate` adds the request to every rank's engine (same order on every rank: Ray runs one caller's calls to an
actor in order) and a single step loop calls `step` on all ranks at once, so continuous batching, the paged KV cache
and the prefix cache work as in one engine. Aborts (a caller that left) go out from the step loop too, between two
steps. A failed step (a rank died, its peers' collectives broke) fails the in-flight requests with a retriable
ReplicaDownError; the replica then waits for Ray to restart the rank (max_restarts) and re-forms the group on a
fresh port. A rank that stops answering without dying (a call never served, a collective stuck on a peer) is killed
for Ray to restart once a call to it has waited `hang_timeout_s`, and handled the same way. The health check asks
every rank too, so that an idle replica notices a rank it lost.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from time import monotonic

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from runtime.dtypes import AUTO
from runtime.engine.async_engine import HANG_TIMEOUT_S
from runtime.engine.block_manager import PrefixCacheStats
from runtime.engine.config import EngineConfig
from runtime.engine.llm_engine import Completion, EngineLoad, RequestError, RequestOutput
from runtime.replica.errors import RankHungError, ReplicaDesyncError, ReplicaDownError
from runtime.replica.rank import EPRank, RankInfo, RankNotConnectedError, RankSpec, RankStatus
from runtime.sampling import SamplingParams

log = logging.getLogger(__name__)
SEED_RANGE = 2**31  # requests without a seed get one, so every rank draws the same tokens
# A rank's calls run one at a time, in order, on its default thread; compiles run beside them on threads of this
# concurrency group (xgrammar releases the GIL while it compiles), so that the batch keeps decoding meanwhile.
COMPILE_GROUP = "structured-compile"
COMPILE_THREADS = 2
RECOVER_POLL_S = 0.5  # between attempts to reach a restarting rank


@dataclass(frozen=True)
class ReplicaSpec:
    model_path: str
    ep_size: int
    dtype: str = AUTO
    absorbed_mla: bool = True
    engine: EngineConfig = field(default_factory=EngineConfig)
    cpus_per_rank: float = 0.5  # fractional: a 2-core machine still places several ranks
    gpus_per_rank: float = 0.0
    threads_per_rank: int = 1
    rank_max_restarts: int = 3
    master_addr: str | None = "127.0.0.1"  # rendezvous host; None = rank 0's Ray node address (multi-node)
    recover_timeout_s: float = 120.0
    hang_timeout_s: float = HANG_TIMEOUT_S  # a call to a rank (a step, a new request) unanswered this long: hung

    def __post_init__(self):
        if self.ep_size <= 0:
            raise ValueError(f"ep_size must be > 0, got {self.ep_size}")
        if self.cpus_per_rank <= 0 and self.gpus_per_rank <= 0:
            raise ValueError("a rank needs cpus_per_rank or gpus_per_rank > 0")
        if self.rank_max_restarts < 0 or self.recover_timeout_s <= 0:
            raise ValueError(f"rank_max_restarts={self.rank_max_restarts} must be >= 0 and "
                             f"recover_timeout_s={self.recover_timeout_s} > 0")
        if self.hang_timeout_s <= 0:
            raise ValueError(f"hang_timeout_s must be > 0, got {self.hang_timeout_s}")

    def rank_spec(self, rank: int) -> RankSpec:
        return RankSpec(self.model_path, self.ep_size, rank, self.dtype, self.absorbed_mla, self.engine,
                        self.threads_per_rank)


@dataclass(frozen=True)
class ReplicaHealth:
    up: bool
    in_flight: int
    generation: int  # bumps each time the group is re-formed
    aborted: int  # requests that ended early (caller left, or refused), freed on every rank
    prefix_cache: PrefixCacheStats | None
    load: EngineLoad | None = None  # rank 0's sequences and KV-cache use (None while down)
    # how long the step now out has run (0 between steps); a step's tokens come at its end, so none has advanced on
    # this replica meanwhile: the router stops sending new requests to one whose step runs far past a long one's
    step_s: float = 0.0


def completion_of(outputs: list[RequestOutput]) -> Completion:
    """The whole completion from a finished request's deltas."""
    last = outputs[-1]
    return Completion(
        request_id=last.request_id, text="".join(o.new_text for o in outputs),
        token_ids=[t for o in outputs for t in o.new_token_ids], finish_reason=last.finish_reason,
        num_prompt_tokens=last.num_prompt_tokens, num_cached_tokens=last.num_cached_tokens,
    )


class Replica:
    """Ray async actor (see `ReplicaActor`); call `start` once, then `generate`."""

    def __init__(self, spec: ReplicaSpec):
        self.spec = spec
        self.placement, self.ranks = self._place_ranks(spec)
        self.pending: dict[str, asyncio.Queue] = {}  # request id -> its RequestOutputs (or the error ending it)
        self.up = False
        self.generation = 0
        self.aborted = 0
        self._aborting: list[str] = []  # request ids to free on every rank before the next step
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._recovering: asyncio.Task | None = None
        self._watching: set[asyncio.Task] = set()  # calls still out after a peer's failed: restarted if hung
        self._probe: asyncio.Task | None = None  # the health check's call to every rank, while out
        self._status: RankStatus | None = None  # what the last probe read off rank 0 (None since a failure)
        self._step_started: float | None = None  # monotonic start of the step out on the ranks (a probe waits for it)

    @staticmethod
    def _place_ranks(spec: ReplicaSpec) -> tuple[PlacementGroup, list]:
        """One placement group bundle per rank, and the rank actors in them."""
        bundle = {"CPU": spec.cpus_per_rank} | ({"GPU": spec.gpus_per_rank} if spec.gpus_per_rank else {})
        placement = placement_group([bundle] * spec.ep_size, strategy="PACK")
        rank_actor = ray.remote(concurrency_groups={COMPILE_GROUP: COMPILE_THREADS})(EPRank)
        ranks = [
            rank_actor.options(
                num_cpus=spec.cpus_per_rank, num_gpus=spec.gpus_per_rank, max_restarts=spec.rank_max_restarts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=r),
            ).remote(spec.rank_spec(r))
            for r in range(spec.ep_size)
        ]
        return placement, ranks

    async def start(self) -> list[RankInfo]:
        await asyncio.wait_for(self.placement.ready(), self.spec.recover_timeout_s)
        infos = await self._connect()
        self._loop_task = asyncio.get_running_loop().create_task(self._step_loop())
        return infos

    async def _connect(self) -> list[RankInfo]:
        infos = await asyncio.gather(*(r.ping.remote() for r in self.ranks))  # waits for restarted ranks to load
        host = self.spec.master_addr or await self._rank0_node_address()
        port = await self.ranks[0].free_port.remote(host)
        await asyncio.gather(*(r.connect.remote(host, port) for r in self.ranks))
        self.generation += 1
        self.up = True
        log.info("replica group %d formed on %s:%d", self.generation, host, port)
        return infos

    async def _rank0_node_address(self) -> str:
        node_id = await self.ranks[0].__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
        return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)

    async def health(self) -> ReplicaHealth:
        """Asks every rank, under the hang deadline: a rank that died or hung while no request was in flight fails
        the replica here, as a failed step would, and the group re-forms. Nothing else would notice: the router
        sends no request to a replica whose health check fails. Callers that come while a probe is out share it
        (the router's checks time out and come again sooner than a hung rank's deadline).
        While a step is out, the answer does not wait for the probe: a rank serves one call at a time, so its
        status would wait for the step (a prefill chunk on a loaded CPU outlasts the router's rounds), and the step
        is under the hang deadline itself. The load is then the one the ranks last gave, and `step_s` says how long
        that step has run (a hung one long before its deadline fails it)."""
        if self.up and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._probe_ranks())
        started = self._step_started
        if self.up and self._probe is not None and started is None:
            await asyncio.shield(self._probe)
        status = self._status if self.up else None
        prefix_cache, load = (status.prefix_cache, status.load) if status is not None else (None, None)
        step_s = monotonic() - started if started is not None else 0.0
        return ReplicaHealth(self.up, len(self.pending), self.generation, self.aborted, prefix_cache, load, step_s)

    async def _probe_ranks(self) -> None:
        generation = self.generation
        try:
            status = (await self._on_every_rank(lambda rank: rank.status.remote()))[0]
        except Exception as exc:  # a rank died, hung, or came back restarted (not in the group)
            if self.up and self.generation == generation:
                self._fail(exc)
            return
        if self.generation == generation:
            self._status = status

    async def max_model_len(self) -> int:
        """Longest prompt + completion one request may have (the ranks' engines share one geometry)."""
        return await self.ranks[0].max_model_len.remote()

    def rank_actors(self) -> list:
        """The rank actors' handles (for fault drills and diagnostics)."""
        return list(self.ranks)

    async def logits(self, input_ids: list[int]):
        """[T, V] fp32 logits of one sequence, computed by all ranks together (rank 0's copy)."""
        self._check_up()
        results = await self._on_every_rank(lambda rank: rank.logits.remote(input_ids))
        return results[0]

    async def generate_stream(self, prompt_token_ids: list[int], params: SamplingParams,
                              request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """One RequestOutput (a delta) per produced token until the request finishes. Raises RequestError for a
        prompt the engine refuses or an id already in flight, ReplicaDownError when the replica loses a rank
        meanwhile."""
        self._check_up()
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        if request_id in self.pending:  # refused here: the ranks would refuse it too, after it took the id's queue
            raise RequestError(f"request id {request_id!r} is already in use")
        if params.seed is None and not params.greedy:
            params = replace(params, seed=int.from_bytes(uuid.uuid4().bytes[:4]) % SEED_RANGE)
        outputs: asyncio.Queue = asyncio.Queue()
        self.pending[request_id] = outputs
        generation = self.generation
        finished = False
        try:
            try:
                if params.structured is not None:  # compiled beside the steps; add_request then finds it cached
                    await asyncio.gather(*(rank.compile_structured.options(concurrency_group=COMPILE_GROUP)
                                           .remote(params) for rank in self.ranks))
                await self._on_every_rank(lambda rank: rank.add_request.remote(prompt_token_ids, params, request_id))
            except (RayActorError, RankHungError, RankNotConnectedError) as exc:  # a rank died, hung, or came
                # back restarted between steps: a failed step
                if self.up and self.generation == generation:  # else already failed: `outputs` holds the error
                    self._fail(exc)
            self._wake.set()
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished and self.pending.pop(request_id, None) is not None and self.up:
                self.aborted += 1
                self._aborting.append(request_id)  # cancelled or refused: the step loop frees it on every rank
                self._wake.set()

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> Completion:
        return completion_of([out async for out in self.generate_stream(prompt_token_ids, params, request_id)])

    def _check_up(self) -> None:
        if not self.up:
            raise ReplicaDownError(f"replica is down (recovering group {self.generation})")

    async def _step_loop(self) -> None:
        while True:
            self._send_aborts()
            if not self.pending or not self.up:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._step_started = monotonic()
            try:
                per_rank = await self._on_every_rank(lambda rank: rank.step.remote())
            except Exception as exc:  # a dead rank, or a peer whose collective broke with it
                self._fail(exc)
                continue
            finally:
                self._step_started = None
            self._deliver(per_rank)

    async def _on_every_rank(self, call: Callable[[object], Awaitable]) -> list:
        """`call(rank)` on every rank at once; their results in rank order, or the first failure. A rank whose call
        is still out after `hang_timeout_s` is hung (seen: rank 0 idle, never serving its queue, docs/ep.md) and is
        killed for Ray to restart: RankHungError, which fails the replica as a dead rank does. A call still out when
        a peer's has failed (a collective waiting on the dead peer) gets the same deadline in the background, so
        that recovery, whose calls queue behind it, is not held up for good."""
        calls = [asyncio.ensure_future(call(rank)) for rank in self.ranks]
        deadline = asyncio.get_running_loop().time() + self.spec.hang_timeout_s
        done, out = await asyncio.wait(calls, timeout=self.spec.hang_timeout_s,
                                       return_when=asyncio.FIRST_EXCEPTION)
        failures = [exc for c in done if (exc := c.exception()) is not None]
        if failures:
            if out:
                watch = asyncio.get_running_loop().create_task(self._restart_if_hung(calls, out, deadline))
                self._watching.add(watch)
                watch.add_done_callback(self._watching.discard)
            raise failures[0]
        if out:
            raise RankHungError(self._restart_hung(calls, out))
        return [c.result() for c in calls]

    async def _restart_if_hung(self, calls: list[asyncio.Future], out: set[asyncio.Future], deadline: float) -> None:
        _, still = await asyncio.wait(out, timeout=max(deadline - asyncio.get_running_loop().time(), 0.0))
        for c in out - still:
            c.exception()  # retrieved: a peer's broken collective is expected here
        if still:
            log.error("%s", self._restart_hung(calls, still))

    def _restart_hung(self, calls: list[asyncio.Future], hung: set[asyncio.Future]) -> str:
        indices = [i for i, c in enumerate(calls) if c in hung]
        for i in indices:
            calls[i].cancel()
            self._restart(self.ranks[i])
        return f"rank(s) {indices} did not answer within {self.spec.hang_timeout_s:g} s: restarted"

    def _restart(self, rank) -> None:
        ray.kill(rank, no_restart=False)  # Ray restarts it (max_restarts); its queued calls fail with RayActorError

    def _send_aborts(self) -> None:
        """Aborts go out from this loop, between two steps, so every rank frees the same requests before the same
        step. Sent from the cancelled request's own task they would be its children, which a recursive `ray.cancel`
        of that task may cancel on one rank and not on the other: the ranks would then disagree on the batch and
        the next collective would hang."""
        if self.up:
            for request_id in self._aborting:
                for rank in self.ranks:
                    rank.abort.remote(request_id)
        self._aborting.clear()  # after a failure the re-formed group starts from empty engines anyway

    def _deliver(self, per_rank: list[list[RequestOutput]]) -> None:
        first = [(o.request_id, o.new_token_ids) for o in per_rank[0]]
        for rank, outputs in enumerate(per_rank[1:], start=1):
            if [(o.request_id, o.new_token_ids) for o in outputs] != first:
                self._fail(ReplicaDesyncError(f"rank {rank} produced other tokens than rank 0"))
                return
        for out in per_rank[0]:
            outputs = self.pending.get(out.request_id)
            if outputs is None:  # cancelled meanwhile
                continue
            outputs.put_nowait(out)
            if out.finished:
                del self.pending[out.request_id]

    def _fail(self, exc: BaseException) -> None:
        log.warning("replica step failed, dropping %d request(s): %s", len(self.pending), exc)
        self.up, self._status = False, None
        error = ReplicaDownError(f"replica failed a step (a rank died or diverged): {type(exc).__name__}: {exc}")
        for outputs in self.pending.values():
            outputs.put_nowait(error)
        self.pending.clear()
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Re-form the group once every rank answers again, retrying until `recover_timeout_s`: Ray refuses calls while
        it restarts a rank, and a rendezvous can fail on its own (the fresh port taken before the group binds it).
        Giving up on the first such failure would leave the replica down for good."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.recover_timeout_s
        while True:
            try:
                await asyncio.wait_for(self._connect(), max(deadline - loop.time(), 0.0))
            except Exception as exc:  # any failure to re-form is retried until the deadline
                if loop.time() >= deadline:
                    log.error("replica gave up re-forming its group: %s", exc)
                    return
                if not isinstance(exc, RayActorError):  # a restarting rank is expected; anything else is news
                    log.warning("replica failed to re-form its group, retrying: %s", exc)
                await asyncio.sleep(RECOVER_POLL_S)
            else:
                self._wake.set()
                return


ReplicaActor = ray.remote(Replica)
