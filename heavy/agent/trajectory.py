"""One research trajectory: think → call tools → observe, until it answers or a budget ends.

Robust to weak models: tool calls written as text are parsed and repaired, a repeated search or page runs the next
unopened result or an unsearched part of the question in its place (explore.py; other repeats are not run again),
the model told so either way; an answer without any evidence is sent back once, an `answer` call with nothing in it
is followed at once by the forced short answer, steps without new evidence or a new computation count towards a
no-progress stop, and every stop of its own ends with a forced short final answer. A stop from the scheduler (finish
now, cancel, early stop, ...) ends at once with the best answer so far. Every step is an event.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from heavy.agent import prompts
from heavy.agent.answer_checks import AnswerChecks
from heavy.agent.budget import (
    OWN_STOPS,
    JobTokenBudget,
    Stopped,
    StopSignal,
    TrajectoryLimits,
    until_stopped,
)
from heavy.agent.context import without_unrun_calls
from heavy.agent.explore import call_signature, describe, unexplored_call
from heavy.agent.gathered import cited_sources, keep_new_evidence, supporting_sources
from heavy.agent.repair import UNREADABLE, repair_call
from heavy.agent.requests import ModelRequests
from heavy.agent.steps import (
    ActionStep,
    Observation,
    TrajectoryResult,
    answer_line,
    computes_something_new,
    only_printed,
    printed_output,
    restates_question,
    says_a_plan,
    says_nothing_found,
    stated_confidence,
    unwrapped,
    without_copied_sentences,
    without_cut_sentence,
    without_result_headers,
    written_answer,
)
from heavy.agent.trajectory_events import TrajectoryEvents
from heavy.events import EventSink, NullSink
from heavy.llm.toolparse import own_call_id, parse_text_tool_calls
from heavy.llm.types import Completion, LLMBackend, LLMError, Message, Sampling, ToolCall, Usage
from heavy.tools.base import Source, ToolContext, ToolExecutor

log = logging.getLogger(__name__)

MAX_CALLS_PER_STEP = 3
FORCED_CONFIDENCE = 0.3
OPENING_TOOL = "search"
_URL = re.compile(r"https?://[^\s)\]>\"']+")


@dataclass(frozen=True)
class TrajectorySpec:
    job_id: str
    index: int
    question: str
    allowed_tools: frozenset[str]
    sampling: Sampling
    limits: TrajectoryLimits = TrajectoryLimits()
    opening_search: bool = True  # step 1 searches the question itself, before the model's first turn
    focus: str | None = None  # and then this part of it (see openings.py); None: the question only
    job_trajectories: int = 1  # how many trajectories its job runs (the job's tool-call caps grow with them)
    elapsed_s: float = 0.0  # time its job ran before this run (a resumed job): the deadline counts it


@dataclass
class _Final:
    answer: str
    confidence: float
    cited: tuple[Source, ...]


def _openai_call(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


class Trajectory:
    def __init__(
        self,
        spec: TrajectorySpec,
        backend: LLMBackend,
        executor: ToolExecutor,
        *,
        sink: EventSink | None = None,
        stop: StopSignal | None = None,
        job_budget: JobTokenBudget | None = None,
    ) -> None:
        self.spec, self.executor = spec, executor
        self.events = TrajectoryEvents(sink or NullSink(), spec.job_id, spec.index)
        self.stop = stop or StopSignal()
        self.tools = executor.specs(spec.allowed_tools) + [prompts.ANSWER_SPEC]
        self.checks = AnswerChecks(spec.question, self.tools)
        self.messages: list[Message] = [
            {"role": "system", "content": prompts.SYSTEM},
            {"role": "user", "content": prompts.QUESTION.format(question=spec.question)},
        ]
        self.steps: list[ActionStep] = []
        self.evidence: dict[str, Source] = {}
        self.excerpts: dict[str, str] = {}
        self.seen_calls: set[str] = set()
        self.final: _Final | None = None
        self.best_guess = ""
        self.no_progress = 0
        self.answer_rejected = False
        self.output_rejected = False
        self.title_rejected = False
        self.unsaid_forced = False  # an `answer` call said nothing, and a forced answer was asked for it
        self.deadline = 0.0
        self.requests = ModelRequests(backend, spec.limits, spec.sampling, self.stop, job_budget, spec.job_id)

    @property
    def usage(self) -> Usage:
        return self.requests.usage

    @property
    def job_budget(self) -> JobTokenBudget | None:
        return self.requests.job_budget

    # --- the loop ---

    async def run(self) -> TrajectoryResult:
        self.deadline = time.monotonic() + self.spec.limits.deadline_s - self.spec.elapsed_s
        error = None
        try:
            if not self.steps and self.spec.opening_search and OPENING_TOOL in self.spec.allowed_tools:
                await self._opening_search()
            reason = await self._loop()
        except Stopped as stopped:
            reason = stopped.reason
        except LLMError as exc:
            reason, error = "error", str(exc)
            log.warning("trajectory %s/%d failed: %s", self.spec.job_id, self.spec.index, exc)
        if self.final is None and reason in OWN_STOPS:
            await self._forced_answer()
        result = self.result_so_far(reason, error)
        await self.events.done(result)
        return result

    async def _loop(self) -> str:
        limits = self.spec.limits
        for index in range(len(self.steps) + 1, limits.max_steps + 1):  # after restored steps, if resumed
            if self.stop.is_set():
                raise Stopped(self.stop.reason or "cancelled")
            if self.job_budget is not None and self.job_budget.remaining <= 0:
                return "job_tokens"
            if self.usage.total_tokens + self._next_step_cost() > limits.total_tokens:
                return "tokens"
            if time.monotonic() >= self.deadline:
                return "deadline"
            completion = await self._complete(self.messages, self.tools, limits.step_tokens, self.deadline)
            if await self._act(index, completion):  # an `answer` call with nothing in it
                self.unsaid_forced = True
                await self._forced_answer()
            await self.after_step()
            if self.final is not None:
                return "answered"
            if self.no_progress >= limits.no_progress_steps:
                return "no_progress"
        return "max_steps"

    async def _opening_search(self) -> None:
        """Search the question as asked: every trajectory starts from evidence instead of from the model's memory
        (a weak model otherwise answers unsearched), and the shared first results are one cached prefix for all
        trajectories of the job. A trajectory with a focus then searches it too, as a second turn so the prefix
        stays shared. The calls are shown as the assistant's own, so the model also sees the format."""
        queries = [self.spec.question] + ([self.spec.focus] if self.spec.focus else [])
        calls = [ToolCall(id=own_call_id(OPENING_TOOL, i), name=OPENING_TOOL, arguments={"query": q})
                 for i, q in enumerate(queries)]
        await self.events.step(1, Completion(content=""), "", calls, self.usage.total_tokens)
        observations = []
        for call in calls:
            self.messages.append({"role": "assistant", "content": "", "reasoning_content": prompts.OPENING_THOUGHT,
                                  "tool_calls": [_openai_call(call)]})
            observations.append(await self._observe(1, call))
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": observations[-1].text})
        self.steps.append(ActionStep(index=1, content="", reasoning="", calls=tuple(calls),
                                     observations=tuple(observations), usage=Usage()))
        await self.after_step()

    async def after_step(self) -> None:
        """Runs after every completed step; a no-op here (the service's worker checkpoints in it)."""

    def _next_step_cost(self) -> int:
        """Tokens the next step and the forced answer after it may take: prompts grow, so the last prompt
        size is a floor for both."""
        last_prompt = self.steps[-1].usage.prompt_tokens if self.steps else 0
        limits = self.spec.limits
        return 2 * last_prompt + limits.step_tokens + limits.final_answer_tokens + 2 * limits.reasoning_tokens

    async def _complete(self, messages: list[Message], tools: list[dict] | None, max_tokens: int,
                        deadline: float) -> Completion:
        request_id = f"{self.spec.job_id}:{self.spec.index}:{len(self.steps)}"
        return await self.requests.complete(messages, tools, max_tokens, deadline, request_id)

    async def _act(self, index: int, completion: Completion) -> bool:
        """Run the step's calls; True when its `answer` call said nothing (to be asked for in words)."""
        content, calls = completion.content.strip(), list(completion.tool_calls)
        from_text = not calls
        if from_text:
            content, calls = parse_text_tool_calls(content)
        repaired, problems = [], []
        for call in calls[:MAX_CALLS_PER_STEP]:
            fixed = repair_call(call, self.tools)
            (repaired if isinstance(fixed, ToolCall) else problems).append(fixed)
        if from_text:  # ids of our own, numbered over the conversation's calls (below)
            made = sum(len(m.get("tool_calls") or ()) for m in self.messages)
            repaired = [replace(c, id=own_call_id(c.name, made + i)) for i, c in enumerate(repaired)]
        # calls after an `answer` never run, and a call left without its result makes OpenAI-compatible servers
        # refuse every later request (400): they are not kept
        answer_at = next((i for i, c in enumerate(repaired) if c.name == prompts.ANSWER_TOOL), len(repaired))
        repaired = repaired[:answer_at + 1]
        # calls past the cap are not run: the model is told (unless an answer ended the step before them)
        over_cap = len(calls) - MAX_CALLS_PER_STEP if answer_at == len(repaired) else 0
        message: Message = {"role": "assistant", "content": content}
        if completion.reasoning:  # a thinking model reads the reasoning behind its earlier calls (interleaved)
            message["reasoning_content"] = completion.reasoning
        if repaired:
            message["tool_calls"] = [_openai_call(c) for c in repaired]
        self.messages.append(message)
        await self.events.step(index, completion, content, repaired, self.usage.total_tokens)

        observations, feedback = [], []
        found_new = unsaid = False
        for call in repaired:
            if call.name == prompts.ANSWER_TOOL:
                told = self._accept_answer(call, observations, cut=completion.finish_reason == "length")
                unsaid = told == prompts.ANSWER_UNSAID  # the forced answer follows at once: no feedback
                feedback.append("" if unsaid else told)
                self.messages.append({"role": "tool", "tool_call_id": call.id, "content": told or "ok"})
                break
            observation = await self._observe(index, call)
            found_new |= (bool(observation.sources) and not observation.repeated
                          or computes_something_new(observation, self.steps))
            observations.append(observation)
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": observation.text})
        if not repaired:
            if not self.checks.says_no_answer(guess := answer_line(content), self.steps, self.evidence):
                self.best_guess = guess
            feedback.append(prompts.NUDGE_CALL_ANSWER if self.evidence else prompts.NUDGE_USE_TOOLS)
        if problems:
            available = ", ".join(s["function"]["name"] for s in self.tools)
            feedback = [prompts.UNREADABLE_CALL if p == UNREADABLE else
                        prompts.UNKNOWN_TOOL.format(name=p.removeprefix("unknown tool "), available=available)
                        for p in problems] + feedback
        if over_cap > 0:
            feedback.append(prompts.CALLS_NOT_RUN.format(ran=MAX_CALLS_PER_STEP, left=over_cap))
        self.no_progress = 0 if found_new else self.no_progress + 1
        text = " ".join(f for f in feedback if f)
        if text and self.final is None:
            self.messages.append({"role": "user", "content": text})
        self.steps.append(ActionStep(index=index, content=content, reasoning=completion.reasoning,
                                     calls=tuple(repaired), observations=tuple(observations),
                                     usage=completion.usage, feedback=text))
        return unsaid

    async def _observe(self, index: int, call: ToolCall) -> Observation:
        if call_signature(call) in self.seen_calls:
            instead = unexplored_call(call, self.spec.question, self._tool_names(), self.seen_calls, self.evidence)
            if instead is None:
                text = prompts.REPEATED_CALL.format(tool=call.name)
                await self.events.result(index, call, ok=False, chars=0, truncated=False, sources=(), note="repeated")
                return Observation(call=call, text=text, repeated=True)
            observation = await self._run_call(index, instead, note=f"in place of a repeated {call.name}")
            told = prompts.REPEATED_CALL_REPLACED.format(tool=call.name, instead=describe(instead))
            return replace(observation, text=f"{told}\n\n{observation.text}")
        return await self._run_call(index, call)

    def _tool_names(self) -> set[str]:
        """The tools this trajectory may call (besides `answer`)."""
        return {s["function"]["name"] for s in self.tools} & self.spec.allowed_tools

    async def _run_call(self, index: int, call: ToolCall, note: str = "") -> Observation:
        self.seen_calls.add(call_signature(call))
        await self.events.call(index, call)
        ctx = ToolContext(job_id=self.spec.job_id, trajectory=self.spec.index,
                          allowed_tools=self.spec.allowed_tools, deadline=self.deadline,
                          trajectories=self.spec.job_trajectories)
        result = await until_stopped(self.executor.call(call.name, call.arguments, ctx), self.stop, self.deadline)
        new_sources = keep_new_evidence(self.evidence, self.excerpts, result)
        await self.events.result(index, call, ok=result.error is None, chars=len(result.text),
                                 truncated=result.truncated, sources=result.sources, note=note)
        return Observation(call=call, text=result.text, sources=new_sources, error=result.error)

    def _accept_answer(self, call: ToolCall, observed: Sequence[Observation], cut: bool = False) -> str:
        """Take the `answer` call, or say why not (empty, or no evidence yet — sent back once). `observed`: this
        step's tool results before the answer; `cut`: the token limit ended the reply, so the answer may end in an
        unfinished sentence."""
        written = written_answer(call.arguments) or str(call.arguments.get("answer") or "")  # a list as written
        answer = without_copied_sentences(without_result_headers(unwrapped(written)), self.checks.our_texts)
        answer = without_cut_sentence(answer, cut)
        if (not any(ch.isalnum() for ch in answer) or self.checks.copies_our_words(answer, self.steps)
                or says_a_plan(answer)):
            # "", a placeholder ("..."), our instructions copied back, or a plan: the model means to answer, so the
            # loop asks for the answer in words right away (once; see `_loop`)
            return prompts.EMPTY_ANSWER if self.unsaid_forced else prompts.ANSWER_UNSAID
        if says_nothing_found(answer):
            return prompts.NOTHING_FOUND_YET
        if restates_question(answer, self.spec.question):
            return prompts.ANSWER_REPEATS_QUESTION
        if not self.output_rejected and only_printed(answer, self._printed(observed), self.spec.question):
            self.output_rejected = True  # sent back once: if the model insists, it stands
            return prompts.ANSWER_IS_OUTPUT.format(question=self.spec.question)
        if not self.title_rejected and self.checks.only_a_title(answer, self.evidence):
            self.title_rejected = True  # sent back once, as above
            return prompts.ANSWER_IS_A_TITLE.format(question=self.spec.question)
        if not self.evidence and not self.answer_rejected:
            self.answer_rejected = True
            self.best_guess = answer
            return prompts.NUDGE_USE_TOOLS
        confidence = stated_confidence(call.arguments)
        listed = call.arguments.get("sources") or []
        listed = [listed] if isinstance(listed, str) else listed if isinstance(listed, list) else []
        # the URLs of tool-result headers copied into the answer still say where it came from
        cited = cited_sources(listed + _URL.findall(written), answer, self.evidence, self.excerpts)
        self.final = _Final(answer=answer, confidence=confidence, cited=cited)
        return ""

    def _printed(self, observed: Sequence[Observation]) -> str:
        """All the python tool printed, this step's calls before the answer included: what an answer must say more
        than."""
        return printed_output([o for step in self.steps for o in step.observations] + list(observed))

    def _supporting(self, answer: str) -> tuple[Source, ...]:
        return supporting_sources(answer, self.evidence, self.excerpts)

    async def _forced_answer(self) -> None:
        limits = self.spec.limits
        messages = without_unrun_calls(self.messages) + [{"role": "user", "content": prompts.FORCE_ANSWER.format(
            question=self.spec.question)}]
        try:
            # a step-budget stop may use the time left to its deadline (on a busy machine 120 s was not enough);
            # a deadline stop gets final_answer_timeout_s past it
            until = max(time.monotonic() + limits.final_answer_timeout_s, self.deadline)
            completion = await self._complete(messages, None, limits.final_answer_tokens, until)
        except (Stopped, LLMError) as exc:
            log.info("trajectory %s/%d: no forced answer (%s)", self.spec.job_id, self.spec.index, exc)
            return
        content, calls = parse_text_tool_calls(completion.content)
        written = next((a for c in calls if (a := written_answer(c.arguments)) is not None), None)
        answer = answer_line(content if written is None else written)
        answer = without_copied_sentences(answer, self.checks.our_texts)
        answer = without_cut_sentence(answer, completion.finish_reason == "length")
        if self.checks.says_no_answer(answer, self.steps, self.evidence):
            answer = self.best_guess
        await self.events.step(len(self.steps) + 1, completion, answer, [], self.usage.total_tokens,
                                action="forced_answer")
        if answer:
            self.final = _Final(answer=answer, confidence=FORCED_CONFIDENCE, cited=self._supporting(answer))

    # --- the result ---

    def result_so_far(self, reason: str, error: str | None) -> TrajectoryResult:
        """What the trajectory has: its answer (else its best guess), steps, evidence and usage."""
        guess_confidence = FORCED_CONFIDENCE if self.best_guess else 0.0
        final = self.final or _Final(self.best_guess, guess_confidence, self._supporting(self.best_guess))
        return TrajectoryResult(
            index=self.spec.index, answer=final.answer, confidence=final.confidence, stop_reason=reason,
            cited=final.cited, evidence=tuple(self.evidence.values()), steps=tuple(self.steps), usage=self.usage,
            temperature=self.spec.sampling.temperature, seed=self.spec.sampling.seed, error=error,
            excerpts=dict(self.excerpts),
        )
