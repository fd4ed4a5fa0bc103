"""The legacy text completions API, `/v1/completions`: raw prompts (text or token ids) continued as written, no chat
template and no tool parsing. Benchmark clients (vLLM's and SGLang's `bench serve`) and lm-eval's generation tasks
speak it, and lm-eval's log-likelihood tasks through `echo` with `logprobs`: the prompt comes back before the
completion, with each prompt token's log-probability (none for the first). Several prompts and `n` choices per
prompt are engine requests of their own, run together; choice `i * n + j` is prompt i's j-th. With `suffix`, a code
model that has fill-in-the-middle markers writes what goes between the prompt and the suffix.

With `best_of` (OpenAI's legacy API, vLLM V0), each prompt's best_of candidates run together, their prompt prefilled
once as n choices' is (the engine's prefix cache), and the n with the highest cumulative log-probability of their
generated tokens come back, best first; usage counts every candidate's tokens.

With `echo` and `logprobs`, only a prompt's first choice asks the engine for the prompt's log-probabilities (a
request that does computes its whole prompt, reusing no cached blocks); the others reuse its blocks and echo its
scores, waiting for them before their first entry.
"""

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.engine.llm_engine import RequestOutput
from runtime.sampling import SamplingParams, TokenLogprobs
from runtime.server.chat import usage_body
from runtime.server.fanout import choice_params, interleaved, run_all
from runtime.server.protocol import MAX_CHOICES, ApiError, CompletionRequest, token_ids_in_vocabulary


def prompt_ids(prompt: str | list[int], tokenizer, suffix: str | None = None) -> list[int]:
    """A prompt as token ids: text encoded as written (special-token text stays text), ids checked against the
    vocabulary; with `suffix`, the fill-in-the-middle prompt prefix-suffix-middle (the model writes the middle)."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else token_ids_in_vocabulary(
        prompt, tokenizer.vocab_size, "prompt")
    if suffix is None:
        return ids
    markers = getattr(tokenizer, "fim_ids", None)
    if markers is None:
        raise ApiError("suffix: this model has no fill-in-the-middle tokens", param="suffix")
    before, after, middle = markers
    return [before, *ids, after, *tokenizer.encode(suffix), middle]


@dataclass
class PromptScores:
    """A prompt's log-probabilities, as its first choice's request gives them, for its other choices to echo."""

    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class TextChoice:
    """One choice: its engine request, and its text and log-probabilities over the request's deltas, in this API's
    shapes."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    counts_prompt: bool  # the first choice of its prompt: usage counts a prompt once however many choices it has
    shows_logprobs: bool  # the request asked for them (best_of asks the engine for them anyway, to rank by)
    generates: bool = True  # False: the prompt scored only (echo, max_tokens 0); the one sampled token is dropped
    echo: str | None = None  # the prompt's text, to come back before the completion
    prompt_scores: PromptScores | None = None  # echo with logprobs: the prompt's, shared by its choices
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)  # None: the prompt's first token
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    cumulative_logprob: float = 0.0  # of the generated tokens: what best_of ranks candidates by
    last: RequestOutput | None = None

    def feed(self, out: RequestOutput, tokenizer) -> dict[str, Any]:
        """Take one engine delta; the choice entry that streams it."""
        first, echoed = len(self.tokens), ""
        if self.echo is not None and self.last is None:
            echoed = self.echo
            if self.prompt_scores is not None:
                if self.scores_prompt:
                    self.prompt_scores.logprobs = out.prompt_logprobs
                    self.prompt_scores.ready.set()
                self._add(tokenizer, self.prompt_ids, self.prompt_scores.logprobs)
        self.last = out
        new_text = out.new_text if self.generates else ""
        if self.generates:
            self.cumulative_logprob += sum(lp.logprob for lp in out.new_logprobs)
            if self.shows_logprobs:
                self._add(tokenizer, out.new_token_ids, out.new_logprobs)
        self.text += echoed + new_text
        return self.entry(echoed + new_text, first, out.finished)

    def _add(self, tokenizer, token_ids: list[int], logprobs: list[TokenLogprobs | None]) -> None:
        for token_id, lp in zip(token_ids, logprobs, strict=False):
            # where the token starts in the text, counted over the tokens' own texts (a character split across
            # tokens decodes to replacement characters in each)
            self.text_offset.append(self.text_offset[-1] + len(self.tokens[-1]) if self.tokens else 0)
            self.tokens.append(tokenizer.decode([token_id]))
            self.token_logprobs.append(lp.logprob if lp is not None else None)
            self.top_logprobs.append(self._top_of(tokenizer, token_id, lp) if lp is not None else None)

    @staticmethod
    def _top_of(tokenizer, token_id: int, lp: TokenLogprobs) -> dict[str, float]:
        """The token's own logprob, then its `logprobs` likeliest alternatives: up to logprobs + 1 entries, as
        OpenAI's API and vLLM give them (`logprobs: 0` gives the token's alone)."""
        top = {tokenizer.decode([token_id]): lp.logprob}
        for i, v in lp.top:
            top.setdefault(tokenizer.decode([i]), v)
        return top

    def entry(self, text: str, first_token: int = 0, finished: bool = True) -> dict[str, Any]:
        logprobs = None
        if self.shows_logprobs:
            logprobs = {"tokens": self.tokens[first_token:], "token_logprobs": self.token_logprobs[first_token:],
                        "top_logprobs": self.top_logprobs[first_token:], "text_offset": self.text_offset[first_token:]}
        return {"index": self.index, "text": text, "logprobs": logprobs,
                "finish_reason": self.finish_reason if finished else None}

    @property
    def scores_prompt(self) -> bool:
        """Its request computes the prompt's log-probabilities (the prompt's first choice's does)."""
        return self.params.prompt_logprobs is not None

    async def echo_ready(self) -> None:
        """Before its first entry: the prompt's scores it echoes are in (another choice's request computes them)."""
        if self.last is None and self.prompt_scores is not None and not self.scores_prompt:
            await self.prompt_scores.ready.wait()

    @property
    def finish_reason(self) -> str:
        return "length" if self.last is not None and self.last.finish_reason == "length" else "stop"


def choices_of(request: CompletionRequest, tokenizer, params_for: Callable[[list[int]], SamplingParams]
               ) -> list[TextChoice]:
    """The request's choices, prompt by prompt, `request.candidates` each (n, or best_of to rank). `params_for(ids)`
    checks a prompt and gives its sampling parameters (fanout.choice_params seeds each choice)."""
    if len(request.prompts) * request.candidates > MAX_CHOICES:
        raise ApiError(f"{len(request.prompts)} prompts x {request.candidates} choices each: at most {MAX_CHOICES} "
                       "in one request", param="n" if request.best_of is None else "best_of")
    ranked = request.candidates > request.n
    choices = []
    for prompt in request.prompts:
        ids = prompt_ids(prompt, tokenizer, request.suffix)
        params = params_for(ids)
        if ranked and params.logprobs is None:  # each generated token's log-probability, to rank the candidates by
            params = dataclasses.replace(params, logprobs=0)
        echo = (prompt if isinstance(prompt, str) else tokenizer.decode(ids)) if request.echo else None
        scores = PromptScores() if params.prompt_logprobs is not None else None
        unscored = dataclasses.replace(params, prompt_logprobs=None)  # the prompt is scored once, by choice 0
        for j in range(request.candidates):
            choices.append(TextChoice(len(choices), ids, choice_params(params if j == 0 else unscored, j),
                                      counts_prompt=j == 0, shows_logprobs=request.logprobs is not None, echo=echo,
                                      prompt_scores=scores, generates=not request.scores_only))
    return choices


def best(choices: list[TextChoice], request: CompletionRequest) -> list[TextChoice]:
    """The choices to return: with best_of, each prompt's n candidates with the highest cumulative log-probability,
    best first (a tie in candidate order), indexed anew; else all of them, as they are."""
    per_prompt = request.candidates
    if per_prompt == request.n:
        return choices
    kept = []
    for first in range(0, len(choices), per_prompt):
        candidates = choices[first : first + per_prompt]
        kept.extend(sorted(candidates, key=lambda c: c.cumulative_logprob, reverse=True)[: request.n])
    for index, choice in enumerate(kept):
        choice.index = index
    return kept


async def _run(engine, choice: TextChoice) -> AsyncIterator[dict[str, Any]]:
    async for out in engine.generate(choice.prompt_ids, choice.params):
        await choice.echo_ready()
        yield choice.feed(out, engine.tokenizer)


async def complete(engine, choices: list[TextChoice]) -> None:
    """Run every choice's request to its end, together."""
    await run_all([_run(engine, c) for c in choices])


async def streamed(engine, choices: list[TextChoice]) -> AsyncIterator[dict[str, Any]]:
    """The choices' entries as their tokens come, interleaved (those with text or tokens' log-probabilities, and
    each choice's last): a token whose text is held back or empty keeps its log-probability, as in vLLM's stream."""
    async for entry in interleaved([_run(engine, c) for c in choices]):
        if entry["text"] or entry["finish_reason"] or (entry["logprobs"] and entry["logprobs"]["tokens"]):
            yield entry


def usage(choices: list[TextChoice]) -> dict[str, Any]:
    """Prompt tokens of each prompt once, completion tokens of every choice (from each request's last output)."""
    firsts = [c.last for c in choices if c.counts_prompt]
    return usage_body(sum(out.num_prompt_tokens for out in firsts),
                      sum(c.last.num_completion_tokens for c in choices if c.generates),
                      sum(out.num_cached_tokens for out in firsts))


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def body(cid: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices, **extra}


def chunk(cid: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
    return {"data": json.dumps(body(cid, created, model, choices, **extra), ensure_ascii=False)}
