"""Settings of the heavy service: the only settings module, read once from `HEAVY_*` environment variables.

Values here are defaults for a whole deployment; a job can narrow budgets per request (see
`heavy.scheduler.JobSpec`). Everything is plain data so the API process can import it without torch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BackendName = Literal["runtime", "openai"]
Mode = Literal["report", "answer"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEAVY_", extra="ignore")

    # --- LLM backend ---
    backend: BackendName = "runtime"
    model: str = "qwen2.5-coder-0.5b"  # runtime model name or path; also sent as `model` to OpenAI endpoints
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key: str = ""
    openai_timeout_s: float = Field(120.0, gt=0)
    llm_max_retries: int = Field(4, ge=0)
    llm_backoff_s: float = Field(0.5, gt=0)  # first retry delay; doubles each retry, with jitter
    llm_backoff_max_s: float = Field(20.0, gt=0)
    # openai backend: a server that answered and then stops (restarted: vLLM's restart takes minutes) is waited for
    # this long from when it stopped (one bound for all requests during one outage) before its requests fail; one
    # that never answered (a wrong URL), or an error a server answers itself (500, 429), fails after llm_max_retries
    llm_outage_s: float = Field(300.0, ge=0)
    llm_requests_per_s: float = Field(20.0, gt=0)  # shared by all trajectories of one worker
    llm_max_concurrency: int = Field(16, ge=1)
    context_tokens: int = Field(8192, ge=512)  # what the agent may put in one prompt
    # a thinking model's reasoning before each reply: added to every model request's completion budget (steps,
    # forced answers, the aggregator's calls). 0 for a model that does not think (the embedded one)
    reasoning_tokens: int = Field(0, ge=0)
    # runtime backend: 0 = engine in process, else this many Ray replicas behind a router (RAY_ADDRESS selects a
    # cluster, else a local Ray instance starts); unset: `heavy up` serves one local replica, other commands use 0
    runtime_replicas: int | None = Field(None, ge=0)
    runtime_ep: int = Field(1, ge=1)  # expert-parallel ranks per Ray replica (Kimi K2 / DeepSeek-V3 checkpoints)
    # runtime backend: reuse the KV of prompt prefixes seen before; off makes a request's numerics independent of what
    # ran earlier in the process (replays), at the cost of prefilling every prompt in full
    runtime_prefix_cache: bool = True
    # runtime backend: fixed-tile linears and per-sequence decode attention, so a greedy answer does not depend on
    # what it was batched with (BF16 on AMX CPUs); 0.66-0.74x the speed (scripts/bench_engine.py, rows g)
    runtime_batch_invariant: bool = False
    # runtime backend: auto = bfloat16 where the hardware computes it natively (AMX, AVX512-BF16, GPUs), else float32
    # (5x faster prefill on an AVX2-only CPU; scripts/bench_dtype.py)
    runtime_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    # runtime backend: prompt-lookup drafts checked per decode step (an agent copies JSON, queries and URLs from its
    # context); 0 = off. Greedy answers stay those of plain decoding, sampled ones keep their distribution
    runtime_speculative_tokens: int = Field(3, ge=0, le=16)
    # runtime backend on Ray replicas: the router's health rounds (`runtime serve`'s flags of the same names, e.g.
    # --stall-after; runtime/replica/router.py, RouterConfig); unset: the runtime's defaults (1, 5, 3, 60, 10000)
    runtime_health_interval_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    runtime_health_timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    runtime_unanswered_rounds: int | None = Field(None, ge=1)
    runtime_stall_after_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    runtime_max_prefix_keys: int | None = Field(None, ge=1)

    # --- job defaults ---
    mode: Mode = "report"
    trajectories: int = Field(8, ge=1, le=8)
    max_steps: int = Field(30, ge=1, le=300)
    step_tokens: int = Field(512, ge=16)  # completion tokens per step
    trajectory_tokens: int = Field(60_000, ge=256)  # prompt + completion tokens per trajectory
    job_tokens: int = Field(400_000, ge=256)  # shared by all trajectories of a job
    job_deadline_s: float = Field(900.0, gt=0)
    straggler_min_done: int = Field(5, ge=1)  # after the deadline, aggregate once this many are done
    straggler_grace_s: float = Field(60.0, ge=0)  # after deadline + grace, aggregate whatever exists
    early_stop_k: int = Field(5, ge=1)  # answer mode: stop when k trajectories agree
    temperature_min: float = Field(0.0, ge=0)
    temperature_max: float = Field(0.7, ge=0)  # a small model above ~0.7 samples noise, not other routes
    seed: int = 0
    opening_search: bool = True  # every trajectory's first step searches the question as asked
    focus_searches: bool = True  # and trajectory k >= 1 then searches a named part of it, one part each
    allowed_tools: tuple[str, ...] = ("search", "open_page", "python")
    price_per_mtok_prompt: float = Field(0.0, ge=0)  # for the cost estimate in the JSON result
    price_per_mtok_completion: float = Field(0.0, ge=0)

    # --- tools ---
    search: Literal["local", "web"] = "local"
    # the local corpus index `heavy corpus add` writes and `heavy ask` / `heavy worker` search; empty: the default
    # path in the XDG data folder (heavy.corpus.commands.default_index_path)
    corpus_index: str = ""
    # the local corpus server's loopback port (0: a free one). Fixed, the corpus pages' URLs outlive a restart: the
    # citations of stored reports keep working, and a job resumed by a worker of the same corpus opens its pages
    corpus_port: int = Field(0, ge=0, le=65535)
    # service workers share the web pages they open through Redis for this long (0: each keeps its own, in memory)
    page_cache_ttl_s: float = Field(86_400.0, ge=0)
    # the python tool's sandbox (heavy.tools.python_sandbox.SandboxLimits). The wall time stays under the executor's
    # 30 s per call, which would otherwise cut the run first with no word of the limit; the rest are kept to what
    # one worker's machine can give each of a job's runs at once (the scratch tmpfs and the output are in memory)
    python_wall_s: float = Field(20.0, gt=0, lt=30)
    python_cpu_s: int = Field(10, ge=1, le=300)
    python_memory_bytes: int = Field(1 << 30, ge=128 << 20, le=64 << 30)  # address space: the interpreter takes ~30 MB
    python_processes: int = Field(16, ge=1, le=1024)  # processes and threads of the sandbox's user
    python_output_bytes: int = Field(64_000, ge=1, le=1_000_000)  # stdout + stderr kept; the rest counted, dropped
    python_scratch_bytes: int = Field(64 << 20, ge=1 << 20, le=4 << 30)  # each private tmpfs / the scratch dir

    # --- service: data dir, Redis, API, workers, tenant defaults ---
    home: str = "~/.cache/heavy"  # HEAVY_HOME, shared with the runtime's model cache
    # redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// (heavy/store/connection.py); empty: a private
    # embedded redis-server under HEAVY_HOME
    redis_url: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    # the path a proxy serves the API under ("/heavy": https://host/heavy/v1/jobs), the ASGI root_path `heavy serve`
    # and `heavy up` give uvicorn: the URLs the API gives (Location, links) and a callback's links carry it
    api_root_path: str = Field("", pattern=r"^(/[^/?#\s]+)*$")
    max_request_bytes: int = Field(64_000, ge=1024)
    tenant_max_jobs: int = Field(4, ge=1)  # concurrent (queued + running) jobs per tenant, unless the tenant says
    tenant_max_tokens: int = Field(50_000_000, ge=1)  # tokens per tenant, unless the tenant says
    job_retention_s: float = Field(30 * 86_400, ge=0)  # an ended job's keys expire this long after (0: kept)
    # a job held for review (awaiting approval) is cancelled, its slot and token grant released, if not approved
    # within this (0: it waits until approved or cancelled)
    approval_window_s: float = Field(86_400.0, ge=0)
    # jobs a tenant may hold for review at once (they take no slot or grant, but Redis keeps each): more are a 429
    tenant_max_held_jobs: int = Field(32, ge=1)
    # event streams a tenant may have open at once, over all API processes (a dashboard's job page, `heavy jobs
    # watch`): more are a 429; a stream is counted until it ends, or for up to 30 s after its API process died.
    # A tenant's own cap (`heavy keys create --max-streams`) wins, as its job and token limits do
    tenant_max_streams: int = Field(64, ge=1)
    webhook_allow: tuple[str, ...] = ()  # "ip:port" callback receivers allowed although not public addresses
    webhook_timeout_s: float = Field(10.0, gt=0)  # one attempt of a callback, whole (address check and POST)
    webhook_attempts: int = Field(3, ge=1)  # POSTs of a callback before it is given up
    worker_jobs: int = Field(2, ge=1)  # jobs one worker runs at once
    worker_lease_s: float = Field(15.0, gt=0)  # a job's entry idle this long belongs to a dead worker
    # a worker's own /metrics (its jobs, steps, tokens, tool calls), on HEAVY_API_HOST: a `heavy worker` has no API
    # to show them (None: not served; `heavy up`'s API shows its worker's)
    worker_metrics_port: int | None = Field(None, ge=0, le=65535)
    report_tokens: int = Field(768, ge=16)  # completion tokens of the aggregator's report pass
    report_sources: int = Field(6, ge=1)  # the most relevant fetched sources the report pass reads
    min_majority: int = Field(2, ge=1)  # answer mode: agreeing trajectories needed to skip the judge (1: lone wins)
    read_on_majority: bool = False  # answer mode: the judge's readings vote beside a majority too (n > 1)
    check_claims: bool = True  # report mode: the model weighs each kept claim against its negation (claim_check.py)

    @model_validator(mode="after")
    def _check_ranges(self) -> Settings:
        if self.temperature_max < self.temperature_min:
            raise ValueError("temperature_max must be >= temperature_min")
        if self.step_tokens > self.trajectory_tokens:
            raise ValueError("step_tokens must be <= trajectory_tokens")
        if self.step_tokens + self.reasoning_tokens >= self.context_tokens:
            raise ValueError("step_tokens + reasoning_tokens must be < context_tokens")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, created once."""
    return Settings()
