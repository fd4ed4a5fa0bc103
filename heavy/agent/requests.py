"""A trajectory's model requests: each prompt fitted to the context by what the server counts, each request holding
its largest cost on the job's grant while it runs, and charged what the server did when a stop aborts it."""

from __future__ import annotations

import asyncio

from heavy.agent.budget import (
    JobTokenBudget,
    Stopped,
    StopSignal,
    TrajectoryLimits,
    job_grant,
    until_stopped,
)
from heavy.agent.context import estimate_tokens, fit_context, with_earlier_attempts, with_usage
from heavy.llm.types import Completion, ContextLengthError, LLMBackend, Message, Sampling, Usage


class ModelRequests:
    def __init__(self, backend: LLMBackend, limits: TrajectoryLimits, sampling: Sampling, stop: StopSignal,
                 job_budget: JobTokenBudget | None, prefix_key: str) -> None:
        self.backend, self.limits, self.sampling, self.stop = backend, limits, sampling, stop
        self.job_budget, self.prefix_key = job_budget, prefix_key  # prefix_key: the job's, for the prefix cache
        self.usage = Usage()  # all the trajectory's requests, aborted ones included
        # the server's prompt tokens per estimated one, at most (never below 1); None until a reply or a refusal of
        # its own showed it
        self.counted_per_estimated: float | None = None
        self.context_tokens = limits.context_tokens  # less once the server says it holds less

    async def complete(self, messages: list[Message], tools: list[dict] | None, max_tokens: int, deadline: float,
                       request_id: str) -> Completion:
        """The model's reply to `messages` (fitted), refitted once when the server refuses the prompt as too long
        and says what to fit it by."""
        max_tokens += self.limits.reasoning_tokens  # a thinking model reasons before its reply
        prompt, estimated = self._fitted(messages, tools, max_tokens)
        try:
            return await self._request(prompt, tools, estimated, max_tokens, deadline, request_id)
        except ContextLengthError as exc:
            if not self._learned(exc, estimated):
                raise
            prompt, estimated = self._fitted(messages, tools, max_tokens)
            return await self._request(prompt, tools, estimated, max_tokens, deadline, request_id)

    @property
    def ratio(self) -> float:
        """What its prompts are fitted and held by: its own ratio, else the best its job knows (another trajectory's
        reply, the aggregator's, a takeover's checkpoints). By the bare estimate, first steps over text it
        undercounts (Chinese: 1.9 times) would hold less than they spend, together past the job's grant."""
        known = self.job_budget and self.job_budget.counted_per_estimated
        return self.counted_per_estimated or known or 1.0

    def _learned(self, refusal: ContextLengthError, estimated: int) -> bool:
        """Whether a server's refusal of a prompt too long says what to fit the prompt again by (once): the tokens
        it counted, when no reply calibrated the estimate for this prompt yet (a first step over non-Latin search
        results), or the context it holds, less than HEAVY_CONTEXT_TOKENS (a server that does not report it, whose
        room left the openai backend found too small to cut the reply to)."""
        counted, learned = refusal.prompt_tokens or 0, False
        if counted / estimated > self.ratio:
            self.counted_per_estimated, learned = counted / estimated, True
        if refusal.room is not None and counted + refusal.room < self.context_tokens:
            self.context_tokens, learned = counted + refusal.room, True
            if self.job_budget is not None:  # the aggregator's prompts are fitted to it too
                self.job_budget.learn_context(self.context_tokens)
        return learned

    def _fitted(self, messages: list[Message], tools: list[dict] | None, max_tokens: int) -> tuple[list[Message], int]:
        """The prompt fitted to the room a reply of `max_tokens` leaves, by the estimate scaled to what the server
        counts, and its estimate."""
        room = int((self.context_tokens - max_tokens) / self.ratio)
        prompt = fit_context(messages, tools, room)
        return prompt, max(1, estimate_tokens(prompt, tools))

    async def _request(self, prompt: list[Message], tools: list[dict] | None, estimated: int, max_tokens: int,
                       deadline: float, request_id: str) -> Completion:
        def needs() -> int:  # asked again while it waits for room: the others' replies may show the job's ratio
            return self.job_budget.bound(estimated, self.counted_per_estimated, max_tokens)
        async with job_grant(self.job_budget, needs, self.stop, deadline) as charge:
            request = self.backend.chat(prompt, tools, self.sampling, max_tokens=max_tokens, request_id=request_id,
                                        prefix_key=self.prefix_key, meter=charge.meter)
            try:
                completion = await until_stopped(request, self.stop, deadline)
            except (Stopped, asyncio.CancelledError):
                # aborted in flight by a stop, or by the worker's own stop (SIGTERM: its checkpoint keeps the charge):
                # what the server did is charged (the job's grant, the tenant)
                self.usage = self.usage + charge.aborted(prompt, tools)
                raise
            except Exception as exc:  # the server may have worked before it failed (a reply that would not parse)
                self.usage = self.usage + charge.failed(exc, prompt, tools)
                raise
            # the estimate undercounts some scripts (Chinese: 1.9 times for the embedded model's tokenizer): later
            # prompts are fitted by what the server counted
            counted = completion.usage.prompt_tokens / estimated
            self.counted_per_estimated = max(self.counted_per_estimated or 1.0, counted)
            if self.job_budget is not None:  # the aggregator's requests are held by the job's largest
                self.job_budget.calibrate(self.counted_per_estimated)
            completion = with_earlier_attempts(with_usage(completion, prompt, tools), charge.meter, prompt, tools)
            charge.tokens = completion.usage.total_tokens
        self.usage = self.usage + completion.usage
        return completion
