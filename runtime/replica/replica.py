"""A replica: EP rank actors in one placement group, driven in lock-step behind an engine-like interface.

`generate` adds the request to every rank's engine (same order on every rank: Ray runs one caller's calls to an
actor in order) and a single step loop calls `step` on all ranks at once, so continuous batching, the paged KV cache
and the prefix cache work as in one engine. Aborts (a caller that left) go out from the step loop too, between two
steps. A failed step (a rank died, its peers' collectives broke) fails the in-flight requests with a retriable
ReplicaDownError; the replica then waits for Ray to restart the rank (max_restarts) and re-forms the group on a
fresh port.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from runtime.dtypes import AUTO
from runtime.engine.block_manager import PrefixCacheStats
from runtime.engine.config import EngineConfig
from runtime.engine.llm_engine import Completion, RequestOutput
from runtime.replica.errors import ReplicaDesyncError, ReplicaDownError
from runtime.replica.rank import EPRank, RankInfo, RankSpec
from runtime.sampling import SamplingParams

log = logging.getLogger(__name__)
SEED_RANGE = 2**31  # requests without a seed get one, so every rank draws the same tokens
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

    def __post_init__(self):
        if self.ep_size <= 0:
            raise ValueError(f"ep_size must be > 0, got {self.ep_size}")
        if self.cpus_per_rank <= 0 and self.gpus_per_rank <= 0:
            raise ValueError("a rank needs cpus_per_rank or gpus_per_rank > 0")
        if self.rank_max_restarts < 0 or self.recover_timeout_s <= 0:
            raise ValueError(f"rank_max_restarts={self.rank_max_restarts} must be >= 0 and "
                             f"recover_timeout_s={self.recover_timeout_s} > 0")

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
        bundle = {"CPU": spec.cpus_per_rank} | ({"GPU": spec.gpus_per_rank} if spec.gpus_per_rank else {})
        self.placement = placement_group([bundle] * spec.ep_size, strategy="PACK")
        rank_actor = ray.remote(EPRank)
        self.ranks = [
            rank_actor.options(
                num_cpus=spec.cpus_per_rank, num_gpus=spec.gpus_per_rank, max_restarts=spec.rank_max_restarts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=r),
            ).remote(spec.rank_spec(r))
            for r in range(spec.ep_size)
        ]
        self.pending: dict[str, asyncio.Queue] = {}  # request id -> its RequestOutputs (or the error ending it)
        self.up = False
        self.generation = 0
        self.aborted = 0
        self._aborting: list[str] = []  # request ids to free on every rank before the next step
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._recovering: asyncio.Task | None = None

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
        try:
            stats = await self.ranks[0].prefix_cache_stats.remote() if self.up else None
        except RayActorError:  # rank 0 just died; the step loop will notice and recover
            return ReplicaHealth(False, len(self.pending), self.generation, self.aborted, None)
        return ReplicaHealth(self.up, len(self.pending), self.generation, self.aborted, stats)

    async def max_model_len(self) -> int:
        """Longest prompt + completion one request may have (the ranks' engines share one geometry)."""
        return await self.ranks[0].max_model_len.remote()

    def rank_actors(self) -> list:
        """The rank actors' handles (for fault drills and diagnostics)."""
        return list(self.ranks)

    async def logits(self, input_ids: list[int]):
        """[T, V] fp32 logits of one sequence, computed by all ranks together (rank 0's copy)."""
        self._check_up()
        results = await asyncio.gather(*(r.logits.remote(input_ids) for r in self.ranks))
        return results[0]

    async def generate_stream(self, prompt_token_ids: list[int], params: SamplingParams,
                              request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """One RequestOutput (a delta) per produced token until the request finishes. Raises RequestError for a
        prompt the engine refuses, ReplicaDownError when the replica loses a rank meanwhile."""
        self._check_up()
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        if params.seed is None and not params.greedy:
            params = replace(params, seed=int.from_bytes(uuid.uuid4().bytes[:4]) % SEED_RANGE)
        outputs: asyncio.Queue = asyncio.Queue()
        self.pending[request_id] = outputs
        finished = False
        try:
            try:
                await asyncio.gather(*(r.add_request.remote(prompt_token_ids, params, request_id) for r in self.ranks))
            except RayActorError as exc:  # a rank died between steps: same as a failed step
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
            try:
                per_rank = await asyncio.gather(*(r.step.remote() for r in self.ranks))
            except Exception as exc:  # a dead rank, or a peer whose collective broke with it
                self._fail(exc)
                continue
            self._deliver(per_rank)

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
        self.up = False
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
