"""Prometheus metrics of the OpenAI-compatible server, at `/metrics`: what vLLM's and SGLang's servers export under
their own names, so that a dashboard of theirs maps over. Request metrics are taken where every request passes
(the engine's `generate`, in process or through the replica router); the engine's queue and KV-cache gauges are read
at scrape time where the engine runs in process, and behind a router, how many replicas are up. Each app has its own
registry (tests build several per process).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from runtime.engine.llm_engine import RequestOutput
from runtime.sampling import SamplingParams

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
        self.registry.register(_EngineGauges(engine, labels))
        self._replicas = None
        if hasattr(engine, "replicas_up"):  # a replica router: how many of its replicas are up
            self._replicas = {name: Gauge(f"heavy_runtime_replicas{name}", doc, list(labels),
                                          registry=self.registry).labels(**labels)
                              for name, doc in (("", "Replicas behind the router"),
                                                ("_up", "Replicas the router sees up"))}

    async def refresh(self) -> None:
        """Read what a scrape shows that must be awaited (the router's replicas), just before it."""
        if self._replicas is not None:
            up, total = await self._engine.replicas_up()
            self._replicas[""].set(total)
            self._replicas["_up"].set(up)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, *args: Any, **kwargs: Any
                       ) -> AsyncIterator[RequestOutput]:
        started, first, last = time.perf_counter(), None, None
        self._in_flight.inc()
        try:
            async for out in self._engine.generate(prompt_token_ids, params, *args, **kwargs):
                if first is None and out.new_token_ids:
                    first = time.perf_counter()
                    self._ttft.observe(first - started)
                last = out
                yield out
        finally:
            self._in_flight.dec()
            if last is not None:
                self._ended(last, started, first)

    def _ended(self, last: RequestOutput, started: float, first: float | None) -> None:
        ended = time.perf_counter()
        reason = str(last.finish_reason) if last.finished else "abort"  # a client gone before the end
        self._finished.labels(**self._labels, finish_reason=reason).inc()
        self._prompt.inc(last.num_prompt_tokens)
        self._cached.inc(last.num_cached_tokens)
        self._generated.inc(last.num_completion_tokens)
        self._e2e.observe(ended - started)
        if first is not None and last.num_completion_tokens > 1:
            self._tpot.observe((ended - first) / (last.num_completion_tokens - 1))


class _EngineGauges:
    """Sequences running and waiting, and the share of KV-cache blocks in use, read at scrape time from an engine in
    this process (a replica router's engines run elsewhere: none then)."""

    def __init__(self, engine: Any, labels: dict[str, str]) -> None:
        self.engine, self.labels = engine, labels

    def collect(self):
        scheduler = getattr(getattr(self.engine, "engine", None), "scheduler", None)
        if scheduler is None:
            return
        blocks = scheduler.block_manager
        for name, doc, value in (
                ("heavy_runtime_num_requests_running", "Sequences the engine is computing", len(scheduler.running)),
                ("heavy_runtime_num_requests_waiting", "Sequences waiting to be admitted", len(scheduler.waiting)),
                ("heavy_runtime_kv_cache_usage_ratio", "Share of KV-cache blocks held by sequences",
                 1 - blocks.num_free_blocks / len(blocks.blocks))):
            family = GaugeMetricFamily(name, doc, labels=list(self.labels))
            family.add_metric(list(self.labels.values()), value)
            yield family
