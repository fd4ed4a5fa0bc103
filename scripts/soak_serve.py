"""Soak of `runtime serve` (the engine in process) on a random tiny Kimi K2 checkpoint, on loopback: many requests as
clients send them: chat and text completions, streamed to the end or dropped after a few chunks, n > 1, structured
output with a schema of its own each time (JSON schema, regex) and forced tool calls with tools of their own, bad
requests (an unknown model, a schema that does not compile, a body that is no JSON).

It samples the server process (RSS, open fds, threads, threads) and its /metrics (requests in
flight, sequences running and waiting, KV-cache blocks in use) and prints each figure's growth per 1,000 requests
over the first and the second half of the run side by side, then what is left once idle (no request, sequence or
KV block should be held then).

    .venv/bin/python scripts/soak_serve.py [--requests 1500] [--clients 4]      # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from common import free_port, print_slopes, wait_until_up  # beside this script
from make_tiny_checkpoint import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "Say something."}]
SCENARIOS = ("chat", "stream", "dropped_stream", "choices", "text", "json_schema", "regex", "forced_call",
             "bad_requests")
METRICS = ("heavy_runtime_requests_in_flight", "heavy_runtime_num_requests_running",
           "heavy_runtime_num_requests_waiting", "heavy_runtime_kv_cache_usage_ratio")


class Client:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.outcomes: dict[str, int] = {}

    async def run(self, scenario: str, index: int) -> None:
        outcome = "ok"
        try:
            await getattr(self, scenario)(index)
        except Exception as exc:  # counted and shown at the end: the soak goes on
            outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
        key = f"{scenario}: {outcome}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    async def chat(self, index: int, *, expect: int = 200, **extra) -> dict:
        response = await self.client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER,
                                                                          "max_tokens": 8, **extra})
        assert response.status_code == expect, response.text
        return response.json()

    async def stream(self, index: int, chunks: int | None = None) -> None:
        body = {"model": "tiny", "messages": USER, "max_tokens": 16, "stream": True, "ignore_eos": True}
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data:")
                if chunks is not None and seen >= chunks:
                    return  # the client goes away mid-stream

    async def dropped_stream(self, index: int) -> None:
        await self.stream(index, chunks=3)

    async def choices(self, index: int) -> None:
        assert len((await self.chat(index, n=2, temperature=1.0))["choices"]) == 2

    async def text(self, index: int) -> None:
        response = await self.client.post("/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 8})
        assert response.status_code == 200, response.text

    async def json_schema(self, index: int) -> None:
        field = f"field_{index}"
        schema = {"type": "object", "properties": {field: {"type": "integer"}}, "required": [field]}
        await self.chat(index, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})

    async def regex(self, index: int) -> None:
        await self.chat(index, guided_regex=f"n{index}-[a-c]{{2}}")

    async def forced_call(self, index: int) -> None:
        tool = {"type": "function", "function": {"name": f"tool_{index}", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
        await self.chat(index, tools=[tool], tool_choice="required")

    async def bad_requests(self, index: int) -> None:
        await self.chat(index, expect=404, model="another")
        await self.chat(index, expect=400, guided_regex="(unclosed")
        response = await self.client.post("/v1/chat/completions", content=b"{not json",
                                          headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text


def figures(process: psutil.Process, metrics_text: str) -> dict[str, float]:
    # the compile gate's threads are among them (Python does not name its threads to the OS)
    values = {"rss MB": process.memory_info().rss / 2**20, "fds": process.num_fds(), "threads": process.num_threads()}
    for line in metrics_text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in METRICS:
            values[name.removeprefix("heavy_runtime_")] = float(line.rsplit(" ", 1)[1])
    return values


async def soak(args: argparse.Namespace, folder: Path) -> None:
    write_tiny_checkpoint(folder)
    port, log = free_port(), open(folder / "serve.log", "wb")  # noqa: SIM115 (closed with the folder)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--model", str(folder), "--served-model-name",
                               "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
                               "--kv-cache-gib", "0.05"],
                              env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            await wait_until_up(http, "/health", tries=600, pause_s=0.5)
            client, process, done, samples = Client(http), psutil.Process(server.pid), 0, []

            async def sample() -> dict[str, float]:
                return figures(process, (await http.get("/metrics")).text)

            async def client_loop(first: int) -> None:
                nonlocal done
                for n in range(first, args.requests, args.clients):
                    await client.run(args.scenarios[n % len(args.scenarios)], n)
                    done += 1
                    if done % args.sample_every == 0:
                        samples.append((done, await sample()))
                        print(f"{time.strftime('%H:%M:%S')} {done} requests", flush=True)

            started = time.monotonic()
            await asyncio.gather(*(client_loop(i) for i in range(args.clients)))
            print(f"\n{done} requests in {time.monotonic() - started:.0f} s; outcomes:")
            for outcome, count in sorted(client.outcomes.items()):
                print(f"  {count:5d}  {outcome}")
            print_slopes(samples, "requests")
            await asyncio.sleep(args.settle_s)
            print(f"\n{args.settle_s:g} s idle later:")
            for name, value in (await sample()).items():
                print(f"  {name:32s} {value:10.2f}")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scenarios", type=lambda text: text.split(","), default=SCENARIOS,
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (default all)")
    parser.add_argument("--sample-every", type=int, default=50, help="requests between samples")
    parser.add_argument("--settle-s", type=float, default=5.0, help="idle time before the last sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(soak(args, Path(tmp)))


if __name__ == "__main__":
    main()
