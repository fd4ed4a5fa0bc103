"""A worker's callbacks, sent beside its jobs rather than in their slots: a receiver slow to answer, or never, held a
job slot for all of a callback's tries (3 x 10 s and the pauses by default) while queued jobs waited for it.

Redis keeps what delivery needs (heavy/webhooks.py): an ended job's callback is due on the callbacks set until a
sender claims and settles it, so a callback this worker does not start (DELIVERIES out already) or does not finish
(stopped, or dead) is sent by a sweep, this worker's or another's."""

from __future__ import annotations

import asyncio
import logging

from heavy.config import Settings
from heavy.logs import logging_about
from heavy.store import JobStore
from heavy.webhooks import deliver, webhook_guard

DELIVERIES = 32  # callbacks one worker has out at once; more stay due, for the next sweep

log = logging.getLogger(__name__)


class Callbacks:
    def __init__(self, jobs: JobStore, settings: Settings) -> None:
        self.jobs, self.settings = jobs, settings
        self.guard = webhook_guard(settings)
        self.out: dict[str, asyncio.Task] = {}  # job id -> its delivery

    def send(self, job_id: str) -> bool:
        """Start sending the ended job's callback (if it is due and this worker claims it), unless it is out
        already or DELIVERIES are: then it stays due. Whether a delivery started."""
        if job_id in self.out or len(self.out) >= DELIVERIES:
            return False
        task = asyncio.create_task(deliver(self.jobs, job_id, self.settings, self.guard), name=f"callback {job_id}")
        self.out[job_id] = task
        task.add_done_callback(lambda done: self._sent(job_id, done))
        return True

    def _sent(self, job_id: str, task: asyncio.Task) -> None:
        self.out.pop(job_id, None)
        # deliver never raises by design: what it did not foresee is logged here, not as asyncio's "never retrieved"
        if not task.cancelled() and (error := task.exception()) is not None:
            with logging_about(job_id=job_id):
                log.error("callback of job %s: %s; it stays due, for a sweep", job_id, error, exc_info=error)

    async def send_due(self) -> int:
        """Start sending the callbacks nobody holds (never claimed, or their sender's lease ran out); how many."""
        free = DELIVERIES - len(self.out)
        if free <= 0:
            return 0
        return sum(self.send(job_id) for job_id in await self.jobs.due_callbacks(limit=free))

    async def aclose(self) -> None:
        """Stop sending. A callback cut off mid-send keeps its claim in Redis, and a sweep sends it (again: at least
        once) when that runs out, as a dead sender's."""
        out = list(self.out.values())
        for task in out:
            task.cancel()
        await asyncio.gather(*out, return_exceptions=True)
