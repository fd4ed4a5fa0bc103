"""Bounds on compiling a request's structured-output spec (guided_json / guided_regex / guided_grammar /
guided_choice / response_format, and a forced tool call's grammar): xgrammar's compile is CPU work whose cost the
client picks (a regex such as `[a-z]{1,200}` takes seconds over a 151k-token vocabulary), and it cannot be stopped
once begun. So a spec has a size cap, at most `workers` compile at once on the gate's own threads, and a request
waits at most `timeout_s` for its compile: past that it is a 400 (its compile still ends on its thread, which is
what keeps the CPU bounded), or a 503 when its compile never got a thread. A request waits on the event loop, not on
a thread: the loop's few default threads tokenize every request, and requests waiting for a compile held them all.
"""

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from runtime.sampling import SamplingParams
from runtime.server.protocol import ApiError

MAX_SPEC_CHARS = 64 * 1024  # a JSON schema, regex or grammar; tools' schemas for a forced call included
COMPILE_WORKERS = 2
# the first structured request also reads the whole vocabulary (~7 s for 151k tokens on a loaded 2-core machine)
COMPILE_TIMEOUT_S = 30.0


class CompileGate:
    def __init__(self, workers: int = COMPILE_WORKERS, timeout_s: float = COMPILE_TIMEOUT_S,
                 max_spec_chars: int = MAX_SPEC_CHARS):
        """Checked before a model loads or Ray starts (`runtime serve`'s flags)."""
        if workers <= 0:
            raise ValueError(f"compile workers must be > 0, got {workers}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"compile timeout_s must be a finite number > 0, got {timeout_s}")
        if max_spec_chars <= 0:
            raise ValueError(f"max_spec_chars must be > 0, got {max_spec_chars}")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="structured-compile")
        self.timeout_s, self.max_spec_chars = timeout_s, max_spec_chars

    async def check(self, compile_spec: Callable[[SamplingParams], object], params: SamplingParams,
                    param: str) -> None:
        """compile_spec(params) (the engine's check_structured) under the gate's bounds, on one of the gate's
        threads; `param` is the request field named in a refusal. Its own errors pass through."""
        spec = params.structured
        if spec is None:
            return
        if len(spec.spec) > self.max_spec_chars:
            raise ApiError(f"the structured-output spec has {len(spec.spec)} characters; at most "
                           f"{self.max_spec_chars}", param=param)
        compiling = self._pool.submit(compile_spec, params)
        try:
            await asyncio.wait_for(asyncio.wrap_future(compiling), self.timeout_s)
        except TimeoutError:
            if compiling.cancel():  # still queued: other requests' compiles held every thread
                raise ApiError(f"every structured-output compile thread stayed busy for {self.timeout_s:g} s; "
                               "retry later", status=503, error_type="server_error") from None
            raise ApiError(f"the structured-output spec did not compile within {self.timeout_s:g} s: simplify it "
                           "(bounded repetitions such as {1,200} expand into many states)", param=param) from None
