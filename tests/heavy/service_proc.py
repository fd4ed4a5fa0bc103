"""A worker or an API server in a process of its own, for the fault tests (which kill and restart them).

    python -m tests.heavy.service_proc worker REDIS_URL PREFIX NAME [slow | slow_aggregation | slow_claim_checks]
    python -m tests.heavy.service_proc api REDIS_URL PREFIX PORT

The worker runs the scripted researcher backend; `slow` makes every trajectory's third step take a minute
(`slow_aggregation`: every aggregator request; `slow_claim_checks`: the claim checks of a report that has one to
weigh, its report pass answered at once), so a test can kill it there: the worker prints `in flight <request id>`
when such a request is sent, and its server has spent CUT_USAGE on it by then."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import uvicorn

from heavy.aggregate import REPORT_REQUEST
from heavy.api import create_app
from heavy.llm.types import Completion, Usage
from heavy.store import Keys, Store
from heavy.worker import Worker
from tests.heavy.fakes import ScriptedBackend, text
from tests.heavy.worker_helpers import WORKER_SETTINGS, executor, researcher, step_of

CUT_USAGE = Usage(prompt_tokens=100, completion_tokens=7)


def third_step(request) -> bool:
    return request.trajectory >= 0 and step_of(request) == 2


def aggregator_request(request) -> bool:
    return request.trajectory < 0


def claim_check(request) -> bool:
    return request.request_id.startswith("claim-check")


def checked_researcher(request):
    """The researcher, whose report holds a claim the page does not state word for word: the model weighs it."""
    if request.request_id == REPORT_REQUEST:
        return text("The argparse module parses options [1].")
    return researcher(request)


SLOW = {"slow": third_step, "slow_aggregation": aggregator_request, "slow_claim_checks": claim_check}
SCRIPTS = {"slow_claim_checks": checked_researcher}


async def worker(url: str, prefix: str, name: str, slow: Callable[[object], bool],
                 script: Callable[[object], Completion] = researcher) -> None:
    def delay_s(request) -> float:
        if slow(request):
            print(f"in flight {request.request_id}", flush=True)
            return 60.0
        return 0.05

    store = Store.connect(url, WORKER_SETTINGS, Keys(prefix))
    backend = ScriptedBackend(script, delay_s=delay_s, in_flight=lambda r: CUT_USAGE if slow(r) else Usage())
    await Worker(store, backend, executor(), WORKER_SETTINGS, name=name).run_until_signalled()
    print(f"worker {name} stopped", flush=True)


def api(url: str, prefix: str, port: int) -> None:
    store = Store.connect(url, WORKER_SETTINGS, Keys(prefix))
    app = create_app(WORKER_SETTINGS, store=store)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", root_path=WORKER_SETTINGS.api_root_path)


if __name__ == "__main__":
    role, url, prefix, arg = sys.argv[1:5]
    if role == "worker":
        mode = "".join(sys.argv[5:])
        asyncio.run(worker(url, prefix, arg, slow=SLOW.get(mode, lambda request: False),
                           script=SCRIPTS.get(mode, researcher)))
    else:
        api(url, prefix, int(arg))
