"""Logprobs of requests as the engine streams them: what the batch-invariance tests compare bit for bit."""

from runtime.engine import LLMEngine
from runtime.sampling import SamplingParams


def logprobs_of_each(engine: LLMEngine, params: SamplingParams, prompts: list[list[int]]) -> list[list[float]]:
    """Runs the prompts together to the end; each one's logprobs, in prompt order."""
    ids = [engine.add_request(prompt, params) for prompt in prompts]
    logprobs: dict[str, list[float]] = {request_id: [] for request_id in ids}
    while engine.has_unfinished():
        for out in engine.step():
            logprobs[out.request_id] += [lp.logprob for lp in out.new_logprobs]
    return [logprobs[request_id] for request_id in ids]


def logprobs_of_last(engine: LLMEngine, params: SamplingParams, *batches: list[list[int]]) -> list[float]:
    """Runs each batch of prompts to the end, one batch after another; the logprobs of the very last prompt."""
    logprobs: list[float] = []
    for batch in batches:
        logprobs = logprobs_of_each(engine, params, batch)[-1]
    return logprobs
