"""Prometheus metrics of the OpenAI-compatible server, at `/metrics`: what vLLM's and SGLang's servers export under
their own names, so that a dashboard of theirs maps over. Request metrics are taken where every request passes
(the engine's `generate`, in process or through the replica router). The engine's queue and KV-cache gauges are read
at scrape time: of the engine in this process, or behind a router, of each replica (label `replica`) as the router's
last health round found it (one a second), with which replicas are up and what the router has at each. Each app has
its own registry (tests build several per process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from runtime.engine.llm_engine import EngineLoad, RequestOutput
from runtime.sampling import SamplingParams

if TYPE_CHECKING:  # the router's module imports Ray, which a server without replicas does not need
    from runtime.replica.router import Availability

# seconds; a CPU prefill of a few thousand tokens takes tens of seconds
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_TOKEN_TIME_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5)


class MeteredEngine:
    """The engine the app serves from, with every request's tokens and timings counted; anything else is the
    wrapped engine's."""

    def __init__(self, engine: Any, model_name: str) -> None:
        self._engine = engine
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(name, doc, [*labels, *extra], registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, list(labels), buckets=buckets, registry=self.registry).labels(**labels)

        self._labels = labels
        self._finished = counter("heavy_runtime_requests_total", "Requests ended, by finish reason", "finish_reason")
        self._prompt = counter("heavy_runtime_prompt_tokens_total", "Prompt tokens of ended requests").labels(**labels)
        self._cached = counter("heavy_runtime_cached_prompt_tokens_total",
                               "Prompt tokens reused from the prefix cache").labels(**labels)
        self._generated = counter("heavy_runtime_generation_tokens_total", "Tokens generated").labels(**labels)
        self._ttft = histogram("heavy_runtime_time_to_first_token_seconds", "Time to the first token",
                               _LATENCY_BUCKETS)
        self._tpot = histogram("heavy_runtime_time_per_output_token_seconds",
                               "Time per output token after the first, per request", _TOKEN_TIME_BUCKETS)
        self._e2e = histogram("heavy_runtime_e2e_request_latency_seconds", "Time from arrival to the last token",
                              _LATENCY_BUCKETS)
        self._in_flight = Gauge("heavy_runtime_requests_in_flight", "Requests the server is serving now",
                                list(labels), registry=self.registry).labels(**labels)
        self._replicas: Availability | None = None  # behind a router: its replicas as the last scrape read them
        self.registry.register(_EngineGauges(self._engine_loads, labels))
        if hasattr(engine, "replica_states"):
            self.registry.register(_ReplicaGauges(lambda: self._replicas, labels))

    async def refresh(self) -> None:
        """Read what a scrape shows that must be awaited (the router's replicas), just before it."""
        if hasattr(self._engine, "replica_states"):
            self._replicas = await self._engine.replica_states()

    def _engine_loads(self) -> list[tuple[dict[str, str], EngineLoad]]:
        """(extra labels, load) of each engine: the one in this process, or each replica up behind a router."""
        if self._replicas is not None:
            return [({"replica": str(i)}, load) for i, load in enumerate(self._replicas.loads) if load is not None]
        engine = getattr(self._engine, "engine", None)
        return [({}, engine.load())] if hasattr(engine, "load") else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, *args: Any,
                       answered_as: Callable[[], str | None] | None = None, **kwargs: Any
                       ) -> AsyncIterator[RequestOutput]:
        """The engine's outputs, counted when the request ends. `answered_as`: the finish reason the client was given
        when the server itself stopped the request before the engine ended it (parallel_tool_calls false, at its
        first call), None if it did not; a request stopped otherwise (its client gone, also before its first output)
        counts as "abort"."""
        started, first, last = time.perf_counter(), None, None
        self._in_flight.inc()
        try:
            async for out in self._engine.generate(prompt_token_ids, params, *args, **kwargs):
                if first is None and out.new_token_ids:
                    first = time.perf_counter()
                    self._ttft.observe(first - started)
                last = out
                yield out
        except asyncio.CancelledError:  # its client left
            if last is None:  # while it waited for its first output (queued, in prefill): no tokens to count
                self._finished.labels(**self._labels, finish_reason="abort").inc()
            raise
        finally:
            self._in_flight.dec()
            if last is not None:
                reason = str(last.finish_reason) if last.finished else (answered_as and answered_as()) or "abort"
                self._ended(last, reason, started, first)

    def _ended(self, last: RequestOutput, reason: str, started: float, first: float | None) -> None:
        ended = time.perf_counter()
        self._finished.labels(**self._labels, finish_reason=reason).inc()
        self._prompt.inc(last.num_prompt_tokens)
        self._cached.inc(last.num_cached_tokens)
        self._generated.inc(last.num_completion_tokens)
        self._e2e.observe(ended - started)
        if first is not None and last.num_completion_tokens > 1:
            self._tpot.observe((ended - first) / (last.num_completion_tokens - 1))


def _gauge(name: str, doc: str, labels: dict[str, str], rows: list[tuple[dict[str, str], float]]
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[*labels, *(rows[0][0] if rows else {})])
    for extra, value in rows:
        family.add_metric([*labels.values(), *extra.values()], value)
    return family


class _EngineGauges:
    """Sequences running and waiting and the share of KV-cache blocks in use, read at scrape time: of the engine in
    this process, or of each replica behind a router (labelled by its index)."""

    def __init__(self, loads: Callable[[], list[tuple[dict[str, str], EngineLoad]]], labels: dict[str, str]) -> None:
        self.loads, self.labels = loads, labels

    def collect(self):
        loads = self.loads()
        if not loads:
            return
        for name, doc, field in (
                ("heavy_runtime_num_requests_running", "Sequences the engine is computing", "running"),
                ("heavy_runtime_num_requests_waiting", "Sequences waiting to be admitted", "waiting"),
                ("heavy_runtime_kv_cache_usage_ratio", "Share of KV-cache blocks held by sequences",
                 "kv_cache_usage")):
            yield _gauge(name, doc, self.labels, [(extra, getattr(load, field)) for extra, load in loads])


class _ReplicaGauges:
    """Behind a router: how many replicas there are and are up, and per replica whether it is up and how many
    requests the router has there."""

    def __init__(self, replicas: Callable[[], Availability | None], labels: dict[str, str]) -> None:
        self.replicas, self.labels = replicas, labels

    def collect(self):
        state = self.replicas()
        if state is None:
            return
        yield _gauge("heavy_runtime_replicas", "Replicas behind the router", self.labels, [({}, len(state.up))])
        yield _gauge("heavy_runtime_replicas_up", "Replicas the router sees up", self.labels, [({}, sum(state.up))])
        per_replica = [({"replica": str(i)}, i) for i in range(len(state.up))]
        yield _gauge("heavy_runtime_replica_up", "1 when the router sees the replica up", self.labels,
                     [(extra, float(state.up[i])) for extra, i in per_replica])
        if state.stalled:  # none when the router actor is gone (all replicas shown down)
            yield _gauge("heavy_runtime_replica_stalled", "1 when the replica's step has run past the router's stall "
                         "bound: up, but sent new requests only when no other replica is up", self.labels,
                         [(extra, float(state.stalled[i])) for extra, i in per_replica])
        yield _gauge("heavy_runtime_replica_requests_in_flight", "Requests the router has at the replica now",
                     self.labels, [(extra, state.in_flight[i]) for extra, i in per_replica])
