"""`make demo`: start `heavy up` (embedded Redis, the embedded model in our runtime on a local Ray replica, a worker,
the API), submit a question about Python over REST, follow its events live, print the report, and shut everything
down.

The corpus is Python's own reference topics (pydoc_data, shipped with every CPython), so this needs no internet
and no GPU. Budgets are small so it finishes in minutes on 2 CPU cores; the first run also converts the model.

    python scripts/demo.py [--trajectories N] [--max-steps N] [--deadline S] [--question TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import free_port  # beside this script

from heavy.config import Settings
from heavy.up import reference_corpus

QUESTION = ("In Python, what do the break and continue statements do inside a for or while loop, and how does "
            "the else clause of a loop interact with break?")
STARTUP_TIMEOUT_S = 1800  # the first run converts the model into HEAVY_HOME


def wait_ready(base: str, key_file: Path, process: subprocess.Popen) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"heavy up exited with code {process.returncode}")
        if key_file.is_file() and key_file.read_text().strip():
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return key_file.read_text().strip()
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    sys.exit("heavy up did not become ready in time")


def describe(event: dict) -> str | None:
    """One terminal line per event worth showing."""
    kind, lane = event["type"], f"[trajectory {event.get('trajectory', 0) + 1}]"
    if kind == "job_started":
        return f"job started: {event['trajectories']} trajectories, mode {event['mode']}"
    if kind == "trajectory_step":
        return f"{lane} step {event['step']}: {event['action']} ({event['total_tokens']} tokens so far)"
    if kind == "tool_call":
        return f"{lane}   -> {event['tool']}({json.dumps(event['arguments'], ensure_ascii=False)[:100]})"
    if kind == "tool_result" and event.get("note") == "repeated":
        return f"{lane}   <- {event['tool']}: a repeated call, not run again (the model is told so)"
    if kind == "tool_result":
        return f"{lane}   <- {event['tool']}: {len(event['sources'])} sources, {event['chars']} chars"
    if kind == "trajectory_done":
        return f"{lane} done ({event['stop_reason']}): {event['answer'][:100]!r}"
    if kind == "aggregating":
        return f"aggregating {event['done']} finished trajectories ({event['reason']}) ..."
    if kind in ("report_ready", "job_failed", "job_cancelled"):
        return f"{kind}: {event.get('error') or event.get('reason') or ''}".rstrip(": ")
    return None


def follow(client: httpx.Client, job_id: str) -> None:
    """Print the job's events as they arrive; reconnect with Last-Event-ID if the stream drops."""
    last = 0
    while True:
        try:
            with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)},
                               timeout=httpx.Timeout(10, read=120)) as response:
                for line in response.iter_lines():
                    if line.startswith("id:"):
                        last = int(line[3:].strip())
                    elif line.startswith("data:"):
                        event = json.loads(line[5:])
                        text = describe(event)
                        if text:
                            print(text, flush=True)
                        if event["type"] in ("report_ready", "job_failed", "job_cancelled"):
                            return
        except httpx.TransportError as exc:
            print(f"(event stream dropped: {exc}; reconnecting after event {last})", flush=True)
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--trajectories", type=int, default=4)  # N=8 in production; fewer keeps it minutes here
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--step-tokens", type=int, default=160)
    # a bound, not a target: alone on 2 cores the job takes about 10 min; beside a CI run, 900 s cut it off
    parser.add_argument("--deadline", type=int, default=1800, help="the job's deadline in seconds")
    parser.add_argument("--save-json", type=Path, help="also write the report's JSON (answer, votes, sources, "
                        "per-trajectory summaries, dropped claims) to this file")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        key_file = Path(scratch) / "api-key"
        # small budgets for a 2-core CPU: a 4k context and a short report pass
        env = {"HEAVY_CONTEXT_TOKENS": "4096", "HEAVY_REPORT_TOKENS": "384", **os.environ}
        # the question is on Python: its reference topics, whatever corpus `heavy corpus add` built here
        corpus = reference_corpus(Settings(), print)
        up = subprocess.Popen([sys.executable, "-m", "heavy.cli", "up", "--port", str(port), "--index", str(corpus),
                               "--api-key-file", str(key_file)], env=env)
        started = time.monotonic()
        try:
            key = wait_ready(base, key_file, up)
            print(f"heavy is up at {base}/ ({time.monotonic() - started:.0f} s)", flush=True)
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
                body = {"question": args.question, "mode": "report", "trajectories": args.trajectories,
                        "max_steps": args.max_steps, "step_tokens": args.step_tokens, "deadline_s": args.deadline,
                        "tools": ["search", "open_page"]}
                response = client.post("/v1/jobs", json=body)
                response.raise_for_status()
                job = response.json()
                print(f"submitted job {job['id']}: {args.question}", flush=True)
                submitted = time.monotonic()
                follow(client, job["id"])
                job = client.get(f"/v1/jobs/{job['id']}").json()
                print(f"\njob {job['status']} in {time.monotonic() - submitted:.0f} s, {job['tokens']} tokens\n")
                report = client.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": "text/markdown"})
                print(report.text if report.status_code == 200 else f"no report: {report.text}")
                if args.save_json and report.status_code == 200:
                    result = client.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": "application/json"})
                    args.save_json.write_text(result.text)
                    print(f"(the report's JSON is in {args.save_json})")
                if job["status"] not in ("done", "partial"):
                    sys.exit(1)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()


if __name__ == "__main__":
    main()
