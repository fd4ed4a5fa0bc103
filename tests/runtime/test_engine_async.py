"""AsyncEngine: concurrent streams equal the synchronous engine; a failing step fails requests instead of hanging."""

import asyncio
import threading

import pytest
import torch

from runtime.engine import EngineConfig, LLMEngine, RequestError
from runtime.engine.async_engine import AsyncEngine, EngineDeadError
from runtime.models.qwen2 import Qwen2ForCausalLM
from runtime.sampling import SamplingParams
from tests.runtime.test_engine import TINY, LetterTokenizer, prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
CONFIG = EngineConfig(block_size=4, num_blocks=128, max_model_len=256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(TINY).eval()


async def collect(engine: AsyncEngine, prompt: list[int]) -> list[int]:
    return [t async for out in engine.generate(prompt, GREEDY) for t in out.new_token_ids]


def test_concurrent_streams_equal_the_synchronous_engine(model):
    ps = prompts(4, seed=11)
    expected = [c.token_ids for c in LLMEngine(model, LetterTokenizer(), CONFIG).generate(ps, GREEDY)]
    engine = AsyncEngine(LLMEngine(model, LetterTokenizer(), CONFIG))
    try:
        async def main():
            return await asyncio.gather(*(collect(engine, p) for p in ps))

        assert asyncio.run(main()) == expected
        with pytest.raises(RequestError, match="empty"):
            asyncio.run(collect(engine, []))
    finally:
        engine.shutdown()


class FailingModel(torch.nn.Module):
    """The tiny model, whose forward fails from its second call on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, input_ids, positions):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("device lost")
        return self.inner(input_ids, positions)

    def compute_logits(self, hidden):
        return self.inner.compute_logits(hidden)


def test_a_failed_step_fails_the_requests_in_flight_and_later_ones(model):
    engine = AsyncEngine(LLMEngine(FailingModel(model), LetterTokenizer(), CONFIG))
    try:
        with pytest.raises(EngineDeadError, match="device lost"):
            asyncio.run(collect(engine, prompts(1)[0]))
        with pytest.raises(EngineDeadError):
            asyncio.run(collect(engine, prompts(1)[0]))
    finally:
        engine.shutdown()


class GatedModel(FailingModel):
    """The tiny model, whose forward signals entry and then waits for a gate opened from the event loop."""

    def __init__(self, inner):
        super().__init__(inner)
        self.entered, self.gate = threading.Event(), threading.Event()

    def forward(self, input_ids, positions):
        self.entered.set()
        assert self.gate.wait(timeout=30), "the gate was never opened: the event loop was blocked"
        return self.inner(input_ids, positions)


def test_the_event_loop_runs_while_a_step_is_in_progress(model):
    gated = GatedModel(model)
    engine = AsyncEngine(LLMEngine(gated, LetterTokenizer(), CONFIG))
    try:
        async def main():
            request = asyncio.create_task(collect(engine, prompts(1)[0]))
            await asyncio.to_thread(gated.entered.wait, 30)  # the engine thread is now inside a model step
            gated.gate.set()  # only possible because the loop is free during that step
            return await request

        assert len(asyncio.run(main())) == GREEDY.max_tokens
    finally:
        gated.gate.set()
        engine.shutdown()


def test_a_step_that_runs_past_the_hang_timeout_makes_the_engine_dead_until_it_returns(model):
    gated = GatedModel(model)
    engine = AsyncEngine(LLMEngine(gated, LetterTokenizer(), CONFIG), hang_timeout_s=0.2)
    try:
        async def main():
            assert await engine.dead() is None
            request = asyncio.create_task(collect(engine, prompts(1)[0]))
            await asyncio.to_thread(gated.entered.wait, 30)  # the engine thread is stuck inside a model step
            await asyncio.sleep(0.3)
            stuck = await engine.dead()
            gated.gate.set()
            outputs = await request
            return stuck, outputs, await engine.dead()

        stuck, outputs, after = asyncio.run(main())
        assert stuck is not None and stuck.startswith("a step has run for") and "the engine is stuck" in stuck
        assert len(outputs) == GREEDY.max_tokens and after is None
    finally:
        gated.gate.set()
        engine.shutdown()


class GatedFailingModel(GatedModel):
    """The tiny model, whose forward signals entry, waits for the gate, and fails."""

    def forward(self, input_ids, positions):
        super().forward(input_ids, positions)
        raise RuntimeError("device lost")


def test_a_request_sent_during_the_failing_step_fails_too_instead_of_hanging(model):
    gated = GatedFailingModel(model)
    engine = AsyncEngine(LLMEngine(gated, LetterTokenizer(), CONFIG))
    try:
        async def main():
            first = asyncio.create_task(collect(engine, prompts(1)[0]))
            await asyncio.to_thread(gated.entered.wait, 30)  # the engine thread is inside the step that will fail
            second = asyncio.create_task(collect(engine, prompts(1, seed=2)[0]))  # queued behind that step
            await asyncio.sleep(0)  # its command is sent
            gated.gate.set()
            return await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 30)  # hang guard

        results = asyncio.run(main())
        assert [type(r) for r in results] == [EngineDeadError, EngineDeadError], results
    finally:
        gated.gate.set()
        engine.shutdown()


class SecondStepGatedModel(GatedModel):
    """The tiny model, whose second forward signals entry and waits for the gate; the others run straight through."""

    def forward(self, input_ids, positions):
        self.calls += 1
        if self.calls == 2:
            return super().forward(input_ids, positions)
        return self.inner(input_ids, positions)


def test_a_consumer_whose_event_loop_closed_mid_step_is_aborted_and_the_engine_serves_on(model):
    """An `asyncio.run` that reads one output and ends while the next step runs: that step's output has no loop to
    go to. It once raised "Event loop is closed" in the engine thread, which killed the engine for every request (and
    a request sent meanwhile waited forever: the thread died again telling it)."""
    expected = LLMEngine(model, LetterTokenizer(), CONFIG).generate([prompts(1, seed=3)[0]], GREEDY)[0].token_ids
    gated = SecondStepGatedModel(model)
    engine = AsyncEngine(LLMEngine(gated, LetterTokenizer(), CONFIG))
    try:
        async def leave_after_the_first_output():
            outputs = engine.generate(prompts(1)[0], SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
            await outputs.__anext__()
            await asyncio.to_thread(gated.entered.wait, 30)  # the engine thread is inside the next step
            await outputs.aclose()  # the abort is queued behind that step

        asyncio.run(leave_after_the_first_output())  # its loop is closed now
        gated.gate.set()
        assert asyncio.run(asyncio.wait_for(collect(engine, prompts(1, seed=3)[0]), 30)) == expected  # hang guard
        assert not engine.engine.has_unfinished()  # the abandoned request was aborted (a step frees before it tells)
        blocks = engine.engine.scheduler.block_manager
        assert blocks.num_free_blocks == len(blocks.blocks)
    finally:
        gated.gate.set()
        engine.shutdown()


def test_a_request_refused_for_an_id_in_use_leaves_the_request_of_that_id_running(model):
    expected = LLMEngine(model, LetterTokenizer(), CONFIG).generate([prompts(1)[0]], GREEDY)[0].token_ids
    gated = SecondStepGatedModel(model)
    engine = AsyncEngine(LLMEngine(gated, LetterTokenizer(), CONFIG))
    try:
        async def main():
            first = engine.generate(prompts(1)[0], GREEDY, request_id="same")
            tokens = list((await first.__anext__()).new_token_ids)
            await asyncio.to_thread(gated.entered.wait, 30)  # "same" is in the step now running
            again = asyncio.create_task(collect_as(engine, prompts(1, seed=2)[0], "same"))
            await asyncio.sleep(0)  # its add is queued behind that step
            gated.gate.set()
            with pytest.raises(RequestError, match="already in use"):
                await again
            async for out in first:
                tokens += out.new_token_ids
            return tokens

        assert asyncio.run(asyncio.wait_for(main(), 30)) == expected  # hang guard: an aborted stream never ends
    finally:
        gated.gate.set()
        engine.shutdown()


async def collect_as(engine: AsyncEngine, prompt: list[int], request_id: str) -> list[int]:
    return [t async for out in engine.generate(prompt, GREEDY, request_id) for t in out.new_token_ids]
