"""An asyncio front for the engine: the engine loop runs in its own thread, requests stream deltas back.

The event loop only puts commands on a queue and awaits per-request queues, so a model step (seconds on a CPU)
never blocks it. A request whose consumer goes away (cancelled task, closed generator) is aborted at once.
"""

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from runtime.engine.llm_engine import LLMEngine, RequestOutput
from runtime.sampling import SamplingParams

log = logging.getLogger(__name__)
HANG_TIMEOUT_S = 300.0  # a step running this long is stuck (SGLang's watchdog default); also the Ray replicas'


class EngineDeadError(RuntimeError):
    """The engine loop stopped (a failed step or shutdown); the request cannot complete."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def put(self, item: RequestOutput | BaseException) -> bool:
        """Hand item to the consumer's event loop; False when that loop is closed (its consumer is gone for good: an
        `asyncio.run` that ended while the request was in a step)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # "Event loop is closed": failing here would kill the engine loop for every request
            return False
        return True


class AsyncEngine:
    def __init__(self, engine: LLMEngine, hang_timeout_s: float = HANG_TIMEOUT_S):
        if hang_timeout_s <= 0:
            raise ValueError(f"hang_timeout_s must be > 0, got {hang_timeout_s}")
        self.engine = engine
        self.hang_timeout_s = hang_timeout_s
        self._step_started: float | None = None  # monotonic time the step in progress began
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stopping = False
        self._error: BaseException | None = None
        self._closed = False  # the loop has ended: no request is taken any more (under _closing)
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def generate(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield one delta per produced token until the request finishes. Raises RequestError for a bad request."""
        if self._error is not None or self._stopping:
            raise EngineDeadError(f"the engine loop has stopped: {self._error}")
        self.engine.check_request(prompt_token_ids)
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._closing:  # a request sent after the loop ended would wait forever
            if self._closed:
                raise EngineDeadError(f"the engine loop has stopped: {self._error or 'shutdown'}")
            self._send(("add", request_id, prompt_token_ids, params, stream))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    # refused (never added: an abort would stop another request of the same id) or the loop died
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # cancelled or abandoned: free the request's blocks now
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    async def dead(self) -> str | None:
        """Why the engine can never serve again (its loop failed or was shut down, or a step has run past the hang
        timeout: a thread cannot be stopped from outside, so only a restart helps), or None."""
        if self._error is not None or self._stopping or not self._thread.is_alive():
            return f"the engine loop has stopped: {self._error or 'shutdown'}"
        started = self._step_started
        if started is not None and (running := time.monotonic() - started) > self.hang_timeout_s:
            return f"a step has run for {running:.0f} s (hang timeout {self.hang_timeout_s:g} s): the engine is stuck"
        return None

    async def unavailable(self) -> str | None:
        """Why the engine cannot serve now, or None (in process, only a dead loop stops it)."""
        return await self.dead()

    def shutdown(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join()

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wakeup.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._apply_commands()
                if not self.engine.has_unfinished():
                    self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                self._step_started = time.monotonic()
                outputs = self.engine.step()
                self._step_started = None
                for out in outputs:
                    stream = self._streams.get(out.request_id)
                    if stream is None:
                        continue
                    if not stream.put(out):  # nobody can read it any more: free its blocks now
                        self.engine.abort(out.request_id)
                        del self._streams[out.request_id]
                    elif out.finished:
                        del self._streams[out.request_id]
        except Exception as exc:  # a failed step fails every request in flight, never hangs them
            log.exception("engine loop failed")
            self._error = exc
        error = EngineDeadError(f"the engine loop has stopped: {self._error or 'shutdown'}")
        with self._closing:
            self._closed = True
            unapplied = []  # sent during the last step: their requests never reached the engine
            while not self._commands.empty():
                unapplied.append(self._commands.get_nowait())
        for stream in [*self._streams.values(), *(c[4] for c in unapplied if c[0] == "add")]:
            stream.put(error)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt, params, stream = command
                try:
                    self.engine.add_request(prompt, params, request_id)
                except Exception as exc:
                    stream.put(exc)
                    continue
                self._streams[request_id] = stream
            else:
                self.engine.abort(command[1])
                self._streams.pop(command[1], None)
