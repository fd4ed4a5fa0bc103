"""Serving benchmark over HTTP: `runtime serve` on loopback, streamed `/v1/completions`, closed loop at each
concurrency (that many clients, each sending its next request when the last one ended), side by side in one run.

Each request is `--input-tokens` random token ids (distinct per request: no prefix-cache hits) and asks for exactly
`--output-tokens` tokens (`ignore_eos`), greedy, as `vllm bench serve --dataset-name random` sends them. Per
concurrency: output tokens/s and requests/s over the run, time to first token (TTFT) and time per output token after
the first (TPOT), median and p90; then the ratios of each concurrency against the first.

    .venv/bin/python scripts/bench_serve.py [--url http://127.0.0.1:8000] [--concurrency 1,8] [--requests 16]

Without `--url` it starts `python -m runtime serve` (the embedded model, `--serve-args` passed on) on a free loopback
port and stops it at the end. With `RUNTIME_API_KEY` set (the key that server then wants, or the one `--url`'s
wants), it is sent as the bearer key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
from common import free_port, percentile  # beside this script

API_KEY = os.environ.get("RUNTIME_API_KEY", "")  # what runtime serve reads too
AUTHORIZATION = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}

READY_TIMEOUT_S = 600  # loading (or converting, the first time) the model
VOCAB_FLOOR, VOCAB_CEILING = 1_000, 20_000  # ids every tokenizer served here has (Qwen2: 151,936; Kimi: 163,840)


@dataclass
class Timing:
    ttft: float  # seconds to the first streamed text
    e2e: float
    tokens: int

    @property
    def tpot(self) -> float:
        return (self.e2e - self.ttft) / max(self.tokens - 1, 1)


def start_server(serve_args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--host", "127.0.0.1", "--port", str(port),
                                *shlex.split(serve_args)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"runtime serve exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.terminate()
    raise SystemExit(f"runtime serve was not ready within {READY_TIMEOUT_S} s")


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: list[int], output_tokens: int
                      ) -> Timing:
    body = {"model": model, "prompt": prompt, "max_tokens": output_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and any(c["text"] for c in chunk["choices"]):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    ended = time.perf_counter()
    return Timing(ttft=(first or ended) - started, e2e=ended - started, tokens=tokens)


async def run_at(url: str, model: str, prompts: list[list[int]], concurrency: int, output_tokens: int
                 ) -> tuple[list[Timing], float]:
    queue: asyncio.Queue = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    timings: list[Timing] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            timings.append(await one_request(client, url, model, queue.get_nowait(), output_tokens))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=None, headers=AUTHORIZATION) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return timings, time.perf_counter() - started


def quantiles(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), percentile(values, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running OpenAI-compatible server (default: start runtime serve)")
    parser.add_argument("--serve-args", default="", help="arguments for the runtime serve this script starts")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency")
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    process, url = (None, args.url.rstrip("/")) if args.url else start_server(args.serve_args)
    try:
        model = httpx.get(f"{url}/v1/models", headers=AUTHORIZATION, timeout=10).json()["data"][0]["id"]
        rng = random.Random(args.seed)
        warmup = [[rng.randrange(VOCAB_FLOOR, VOCAB_CEILING) for _ in range(args.input_tokens)]]
        asyncio.run(run_at(url, model, warmup, 1, 4))
        rows = []
        for level in levels:
            prompts = [[rng.randrange(VOCAB_FLOOR, VOCAB_CEILING) for _ in range(args.input_tokens)]
                       for _ in range(args.requests)]
            timings, seconds = asyncio.run(run_at(url, model, prompts, level, args.output_tokens))
            tokens = sum(t.tokens for t in timings)
            rows.append((level, tokens / seconds, len(timings) / seconds, *quantiles([t.ttft for t in timings]),
                         *quantiles([t.tpot for t in timings])))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    print(f"{model} at {url}: {args.requests} requests per concurrency, {args.input_tokens} prompt tokens, "
          f"{args.output_tokens} output tokens each")
    print(f"{'concurrency':>11} {'out tok/s':>10} {'req/s':>7} {'TTFT p50':>9} {'p90':>7} {'TPOT p50':>9} {'p90':>7}"
          f" {'tok/s ratio':>12} {'TTFT ratio':>11}")
    base = rows[0]
    for level, rate, requests, ttft, ttft90, tpot, tpot90 in rows:
        print(f"{level:>11} {rate:>10.1f} {requests:>7.2f} {ttft * 1000:>7.0f}ms {ttft90 * 1000:>5.0f}ms "
              f"{tpot * 1000:>7.1f}ms {tpot90 * 1000:>5.1f}ms {rate / base[1]:>11.2f}x {ttft / base[3]:>10.2f}x")


if __name__ == "__main__":
    main()
