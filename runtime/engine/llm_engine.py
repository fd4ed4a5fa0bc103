"""The synchronous engine: add_request / step / abort, and generate() for a batch of prompts.

One step = schedule (continuous batching) → one forward pass over all scheduled tokens → sample → stop checks.
"""

import itertools
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from runtime.engine.config import EngineConfig
from runtime.engine.detokenizer import IncrementalDecoder, StopStringText
from runtime.engine.model_runner import ModelRunner
from runtime.engine.scheduler import Scheduler
from runtime.engine.sequence import FinishReason, Sequence
from runtime.sampling import SamplingParams, TokenLogprobs
from runtime.structured import Grammars, StructuredOutputError


class RequestError(ValueError):
    """A request the engine cannot serve (empty, longer than the context, duplicate id)."""


class PromptTooLong(RequestError):
    """A prompt that leaves no room in the engine's context; `prompt_tokens` is its length (a caller may fit it
    again by it)."""

    def __init__(self, prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(f"the prompt has {prompt_tokens} tokens; this engine's context is {max_model_len} "
                         "(prompt plus at least one generated token)")
        self.prompt_tokens, self.max_model_len = prompt_tokens, max_model_len

    def __reduce__(self):  # Ray carries a replica's error by pickling it
        return type(self), (self.prompt_tokens, self.max_model_len)


@dataclass
class RequestOutput:
    """What one step produced for one request: the new tokens and text (a delta), and its state."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens reused from the prefix cache
    num_completion_tokens: int
    new_logprobs: list[TokenLogprobs] = field(default_factory=list)
    # with a request's first output, when asked: one per prompt token, None for the first (nothing predicts it)
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass
class SpeculationStats:
    """Speculative drafts checked and taken since start (EngineConfig.speculative_tokens)."""

    drafted: int = 0
    accepted: int = 0


@dataclass(frozen=True)
class EngineLoad:
    """What the engine holds now (the metrics' gauges; a replica's ranks report rank 0's)."""

    running: int  # sequences being computed
    waiting: int  # sequences waiting to be admitted
    kv_cache_usage: float  # share of the KV-cache blocks sequences hold


@dataclass
class Completion:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    num_prompt_tokens: int
    num_cached_tokens: int


class EngineTokenizer(Protocol):
    """What the engine needs of a tokenizer (runtime.tokenizer.Tokenizer and the Kimi tokenizer have it)."""

    eos_ids: frozenset[int]

    def incremental_decoder(self) -> IncrementalDecoder: ...


class _Request:
    def __init__(self, seq: Sequence, text: StopStringText, stop_tokens: frozenset[int]):
        self.seq, self.text = seq, text
        self.stop_tokens = stop_tokens  # EOS (unless ignored) and the request's stop ids: checked at every token


class LLMEngine:
    def __init__(self, model: nn.Module, tokenizer: EngineTokenizer, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.runner = ModelRunner(model, self.config)
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.scheduler = Scheduler(self.config, self.runner.num_blocks, positions)
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(tokenizer.eos_ids)
        # the setting, or less: what the cache holds, or the model's max_position_embeddings
        self.max_model_len = self.scheduler.max_model_len
        self.requests: dict[str, _Request] = {}
        self._ids = itertools.count()
        self.speculation = SpeculationStats()
        self.grammars = Grammars(tokenizer, lambda: self.runner.model.config.vocab_size,
                                 cache_bytes=self.config.grammar_cache_bytes)

    @property
    def stats(self):
        """Prompt tokens computed vs reused from the prefix cache, since start."""
        return self.scheduler.block_manager.stats

    def load(self) -> EngineLoad:
        blocks = self.scheduler.block_manager
        return EngineLoad(len(self.scheduler.running), len(self.scheduler.waiting),
                          1 - blocks.num_free_blocks / len(blocks.blocks))

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None) -> str:
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        self.check_request(prompt_token_ids)
        if params.logit_bias:
            self._check_bias(params)
        seq = Sequence(request_id, prompt_token_ids, params)
        try:
            seq.matcher = self.check_structured(params)
        except StructuredOutputError as exc:
            raise RequestError(str(exc)) from None
        stop_tokens = (frozenset() if params.ignore_eos else self.eos_token_ids) | frozenset(params.stop_token_ids)
        text = StopStringText(self.tokenizer.incremental_decoder(), params.stop)
        self.requests[request_id] = _Request(seq, text, stop_tokens)
        self.scheduler.add(seq)
        return request_id

    def check_request(self, prompt_token_ids: list[int]) -> None:
        """Raise RequestError for a prompt this engine cannot serve (reads only immutable settings: thread-safe)."""
        if not prompt_token_ids:
            raise RequestError("the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise PromptTooLong(len(prompt_token_ids), self.max_model_len)

    def check_structured(self, params: SamplingParams):
        """The grammar matcher of a structured-output request (None for another); StructuredOutputError for a
        schema, regex or grammar that does not compile. Thread-safe: the server checks requests before the engine
        thread adds them (compiled grammars are cached)."""
        return self.grammars.matcher(params.structured)

    def _check_bias(self, params: SamplingParams) -> None:
        """An id past the model's vocabulary would fail the sampler, and with it the whole step's batch."""
        vocab = self.runner.model.config.vocab_size
        if bad := [t for t, _ in params.logit_bias if not 0 <= t < vocab]:
            raise RequestError(f"logit_bias names token ids outside the vocabulary (size {vocab}): {bad[:5]}")

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its blocks; unknown or finished ids are ignored."""
        request = self.requests.pop(request_id, None)
        if request is not None:
            self.scheduler.finish(request.seq, FinishReason.ABORT)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        seqs = self.scheduler.schedule()
        if not seqs:
            return []
        # every scheduled sequence is computed; the ones reaching their last token also sample
        sample = [s.num_computed_tokens + s.num_scheduled_tokens == len(s) for s in seqs]
        tokens, logprobs = self.runner.run(seqs, sample)
        checked = [len(s.drop_drafts()) for s in seqs]  # before the step's blocks are hashed
        self.scheduler.after_step(seqs)
        outputs = []
        for seq, taken, taken_logprobs, drafts in zip(seqs, tokens, logprobs, checked, strict=True):
            if taken:
                self.speculation.drafted += drafts
                self.speculation.accepted += len(taken) - 1
                outputs.append(self._append(seq, taken, taken_logprobs))
        return outputs

    def _append(self, seq: Sequence, tokens: list[int], logprobs: list[TokenLogprobs | None]) -> RequestOutput:
        """Append a step's tokens to seq (one, or the drafts the model took and one more), stopping at the first
        that ends it. All but the last have their K/V computed already: they were checked as drafts this step."""
        request = self.requests[seq.request_id]
        asked_prompt = seq.params.prompt_logprobs is not None and seq.num_completion_tokens == 0  # first output
        reason, appended = None, 0
        for i, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
            seq.append_token(token)
            if seq.matcher is not None:
                seq.matcher.accept_token(token)  # one the grammar allowed: the sampler masked the rest
            if i < len(tokens) - 1:
                seq.num_computed_tokens += 1
            if logprob is not None:
                seq.logprobs.append(logprob)
            appended += 1
            reason = self._finish_reason(seq, token, request.stop_tokens)
            if reason is None or token not in request.stop_tokens:  # a stop token is not part of the text
                request.text.add(token)
            if request.text.stopped:  # also on the last allowed token: the text ended at the stop string
                reason = FinishReason.STOP
            if reason is not None:
                break
        if reason is not None:
            self.scheduler.finish(seq, reason)
            del self.requests[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=tokens[:appended],
            new_text=request.text.delta(final=reason is not None),
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_prompt_tokens,
            num_completion_tokens=seq.num_completion_tokens,
            new_logprobs=[lp for lp in logprobs[:appended] if lp is not None],
            prompt_logprobs=list(seq.prompt_logprobs) if asked_prompt else None,
        )

    def _finish_reason(self, seq: Sequence, token: int, stop_tokens: frozenset[int]) -> FinishReason | None:
        if token in stop_tokens:
            return FinishReason.STOP
        if seq.num_completion_tokens >= seq.params.max_tokens or len(seq) >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        """Run prompts to completion together (continuous batching); results in prompt order."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params_list, strict=True)]
        texts = {i: "" for i in ids}
        done: dict[str, RequestOutput] = {}
        seqs = {i: self.requests[i].seq for i in ids}
        while len(done) < len(ids):
            for out in self.step():
                texts[out.request_id] += out.new_text
                if out.finished:
                    done[out.request_id] = out
        return [
            Completion(
                request_id=i,
                text=texts[i],
                token_ids=seqs[i].completion_token_ids,
                finish_reason=done[i].finish_reason,
                num_prompt_tokens=done[i].num_prompt_tokens,
                num_cached_tokens=done[i].num_cached_tokens,
            )
            for i in ids
        ]
