"""`python -m runtime serve --replicas R --ep E`: the OpenAI-compatible app of runtime.server over the router.

`RouterFrontend` has what runtime.server.app asks of an AsyncEngine (tokenizer, limits, an async `generate` of
deltas). A job's `prefix_key` reaches the router either as `generate`'s argument (an in-process caller such as
heavy's runtime backend) or, over HTTP, through the `X-Prefix-Key` header (heavy's OpenAI backend sends it; it also
sends it as `user`, which the app's request model drops): an ASGI middleware puts it in a context variable that
`generate` reads when no key is passed. The middleware also names each HTTP request (a group): its n choices or
best_of candidates, each an engine request, then go to one replica, which prefills their prompt once.
"""

import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from pathlib import Path

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runtime.distributed import expert_slice
from runtime.distributed.group import LOOPBACK
from runtime.dtypes import AUTO
from runtime.engine.async_engine import HANG_TIMEOUT_S
from runtime.engine.config import EngineConfig, check_context_held
from runtime.engine.factory import load_tokenizer
from runtime.engine.llm_engine import LLMEngine, RequestOutput
from runtime.models.registry import MODEL_TYPES
from runtime.replica.local_ray import start_local_ray
from runtime.replica.rank import EP_MODEL_TYPES, routed_experts
from runtime.replica.ray_logs import ray_lines_through_ours, worker_output_through_ours
from runtime.replica.replica import ReplicaActor, ReplicaSpec
from runtime.replica.router import Availability, RouterActor, RouterConfig
from runtime.sampling import SamplingParams
from runtime.server.compile_gate import CompileGate
from runtime.structured import Grammars

log = logging.getLogger(__name__)
PREFIX_KEY_HEADER = b"x-prefix-key"
START_TIMEOUT_S = 600.0  # loading every rank of every replica
STOP_TIMEOUT_S = 5.0  # for the router to stop its health rounds before the replicas go
DEAD_MARGIN_S = 60.0  # past a replica's recovery deadline before /health calls the server dead
_prefix_key: ContextVar[str | None] = ContextVar("prefix_key", default=None)
_request_group: ContextVar[str | None] = ContextVar("request_group", default=None)


class PrefixKeyMiddleware:
    """Pure ASGI (so streamed responses see the values too): X-Prefix-Key and a name of the HTTP request's own ->
    the request's context."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            value = dict(scope.get("headers") or []).get(PREFIX_KEY_HEADER)
            token = _prefix_key.set(value.decode("latin-1") if value else None)
            group = _request_group.set(uuid.uuid4().hex)
            try:
                return await self.app(scope, receive, send)
            finally:
                _request_group.reset(group)
                _prefix_key.reset(token)
        return await self.app(scope, receive, send)


class UnsupportedReplicaModel(ValueError):
    """The checkpoint is not one the replicas run: a model type no rank loads, or a dense model split over EP > 1
    ranks (it has no experts)."""


class RouterFrontend:
    def __init__(self, router, tokenizer, max_model_len: int, replicas: tuple = (),
                 dead_after_s: float = ReplicaSpec.recover_timeout_s + DEAD_MARGIN_S, owns_ray: bool = False,
                 grammar_cache_bytes: int | None = None):
        self.router, self.tokenizer, self.max_model_len = router, tokenizer, max_model_len
        self.owns_ray = owns_ray  # shutdown() ends the local Ray instance start_frontend began for it
        self.replicas = replicas  # the router's replica actors, in its order (for shutdown, drills, diagnostics)
        self.dead_after_s = dead_after_s
        # enough to compile (the replicas' engines compile again, each under the same bound)
        self.grammars = Grammars(tokenizer, lambda: tokenizer.vocab_size, cache_bytes=grammar_cache_bytes)

    @property
    def engine(self) -> "RouterFrontend":
        """The app reads limits from `engine.engine` (an AsyncEngine's LLMEngine): here they are the frontend's."""
        return self

    def check_request(self, prompt_token_ids: list[int]) -> None:
        LLMEngine.check_request(self, prompt_token_ids)  # the same rule and message as one engine (reads max_model_len)

    def check_structured(self, params: SamplingParams) -> None:
        """A structured-output spec that does not compile is refused here, before it reaches a replica
        (StructuredOutputError)."""
        self.grammars.matcher(params.structured)

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None,
                       prefix_key: str | None = None) -> AsyncIterator[RequestOutput]:
        """Deltas of one request, routed by `prefix_key` (default: the HTTP request's X-Prefix-Key). Raises
        RequestError for a prompt the engine refuses, and the router's retriable errors (ReplicaDownError,
        NoReplicaAvailableError) when replicas fail. Without a key, the HTTP request's other choices decide."""
        self.check_request(prompt_token_ids)
        key = prefix_key if prefix_key is not None else _prefix_key.get()
        stream = self.router.generate_stream.remote(prompt_token_ids, params, request_id=request_id, prefix_key=key,
                                                    group=_request_group.get())
        try:
            async for ref in stream:
                yield (await ref).output
        finally:
            # a client that went away: stop the router's stream (no-op once finished); not recursive, as in the router
            ray.cancel(stream, recursive=False)

    async def dead(self) -> str | None:
        """Why nothing can be served until this process restarts, or None: the router actor is gone, or no replica
        has been up for `dead_after_s` (longer than a replica keeps trying to re-form its group, or a rank that
        stopped answering)."""
        return (await self._reasons())[0]

    async def unavailable(self) -> str | None:
        """Why no request can be served now (the above, or no replica up while ranks restart and groups re-form),
        or None when one can."""
        dead, down = await self._reasons()
        return dead or down

    async def replica_states(self) -> Availability:
        """Each replica's state as the router last saw it (what /metrics shows); all down when the router is gone."""
        try:
            return await self.router.availability.remote()
        except RayActorError:
            count = len(self.replicas)
            return Availability((False,) * count, (0.0,) * count, (0,) * count, (None,) * count)

    async def _reasons(self) -> tuple[str | None, str | None]:
        """(why it is dead, why nothing is up now)."""
        try:
            state = await self.router.availability.remote()
        except RayActorError as exc:
            return f"the router is gone: {exc}", None
        replicas = len(state.up)
        if min(state.down_for_s) > self.dead_after_s:
            return f"no replica has been up for {min(state.down_for_s):.0f} s (of {replicas}); they gave up", None
        if any(state.up) or any(state.late):  # a late one is still sent requests: it may answer them
            return None, None
        return None, f"no replica is up (of {replicas}); they are restarting or re-forming"

    def shutdown(self) -> None:
        with contextlib.suppress(RayActorError, ray.exceptions.GetTimeoutError):  # a router already gone
            ray.get(self.router.stop.remote(), timeout=STOP_TIMEOUT_S)
        for actor in (self.router, *self.replicas):
            ray.kill(actor)
        if self.owns_ray:  # the local instance start_frontend began: its node's processes go with it
            ray.shutdown()


def init_ray() -> bool:
    """RAY_ADDRESS selects an existing cluster; otherwise a private local instance on loopback. True when this call
    started one (its owner shuts it down), False when Ray was already initialised here."""
    if ray.is_initialized():
        return False
    ours = ray_lines_through_ours()  # before ray.init, whose lines are the ones to route
    starts_one = not os.environ.get("RAY_ADDRESS")
    if starts_one:
        start_local_ray()
    else:
        ray.init(address=os.environ["RAY_ADDRESS"])
    if ours:
        worker_output_through_ours()
    return starts_one


def start_frontend(folder: Path, replicas: int, ep: int, engine: EngineConfig | None = None, dtype: str = AUTO,
                   absorbed_mla: bool = True, hang_timeout_s: float = HANG_TIMEOUT_S,
                   router: RouterConfig | None = None) -> RouterFrontend:
    """Start `replicas` EP groups of `ep` ranks and a router over them (`router`: its health rounds)."""
    folder = Path(folder)
    if replicas <= 0:
        raise ValueError(f"replicas must be > 0, got {replicas}")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type not in MODEL_TYPES:  # else each rank would fail to load it inside its actor, Ray started
        raise UnsupportedReplicaModel(f"{folder}: model_type {model_type!r}; replicas run "
                                      f"{', '.join(sorted(MODEL_TYPES))} checkpoints")
    if ep != 1 and model_type not in EP_MODEL_TYPES:
        raise UnsupportedReplicaModel(f"{folder}: model_type {model_type!r} is dense: its replicas are one rank "
                                      f"each (ep=1), got ep={ep}; EP splits the experts of "
                                      f"{', '.join(EP_MODEL_TYPES)} checkpoints")
    if model_type in EP_MODEL_TYPES:
        expert_slice(routed_experts(folder), ep, rank=0)  # ExpertParallelError if they do not split evenly
    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    # on a cluster the rendezvous runs on rank 0's node; alone, on loopback, where the ranks share this machine's
    # cores (one rank alone, the embedded model's, gets them all)
    master_addr = None if on_cluster else LOOPBACK
    threads = 1 if on_cluster else max(1, (os.cpu_count() or 1) // (replicas * ep))
    spec = ReplicaSpec(str(folder), ep, dtype=dtype, absorbed_mla=absorbed_mla, engine=engine or EngineConfig(),
                       master_addr=master_addr, hang_timeout_s=hang_timeout_s,
                       threads_per_rank=threads)  # checked before Ray starts
    owns_ray = init_ray()
    # Router and replica actors live on this (the HTTP server's) node: they share its fate, not a rank's node's.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handles = [ReplicaActor.options(num_cpus=0, scheduling_strategy=here).remote(spec) for _ in range(replicas)]
    ray.get([h.start.remote() for h in handles], timeout=START_TIMEOUT_S)
    router_actor = RouterActor.options(num_cpus=0, scheduling_strategy=here).remote(handles, router)
    ray.get(router_actor.start.remote())
    max_model_len = ray.get(handles[0].max_model_len.remote())
    log.info("serving %d replica(s) x EP=%d of %s", replicas, ep, folder)
    return RouterFrontend(router_actor, load_tokenizer(folder), max_model_len, tuple(handles),
                          dead_after_s=spec.recover_timeout_s + DEAD_MARGIN_S, owns_ray=owns_ray,
                          grammar_cache_bytes=spec.engine.grammar_cache_bytes)


def serve_replicas(model: str, host: str, port: int, replicas: int, ep: int, absorbed_mla: bool = True,
                   dtype: str = AUTO, hang_timeout_s: float = HANG_TIMEOUT_S, served_name: str | None = None,
                   engine: EngineConfig | None = None, max_model_len: int | None = None,
                   router: RouterConfig | None = None, api_keys: Sequence[str] = (),
                   max_body_bytes: int | None = None, compiles: CompileGate | None = None) -> None:
    """`engine`: the replicas' config (the CLI's options); `max_model_len`: the context asked for explicitly, refused
    when the replicas' KV cache cannot hold it; `router`: the router's health rounds; `api_keys`, `max_body_bytes`:
    what the app asks of a request (runtime.server.gate); `compiles`: the bounds on compiling structured-output
    specs (runtime.server.compile_gate)."""
    import uvicorn

    from runtime.embedded import resolve_model
    from runtime.server.app import create_app

    frontend = start_frontend(resolve_model(model), replicas, ep, engine=engine, dtype=dtype,
                              absorbed_mla=absorbed_mla, hang_timeout_s=hang_timeout_s, router=router)
    try:
        check_context_held(max_model_len, frontend.max_model_len)
        app = PrefixKeyMiddleware(create_app(frontend, model_name=served_name or str(model), api_keys=api_keys,
                                             max_body_bytes=max_body_bytes, compiles=compiles))
        uvicorn.run(app, host=host, port=port, log_level="info", log_config=None)  # its lines through ours: JSON
    finally:
        frontend.shutdown()
