"""The legacy text completions API, `/v1/completions`: a raw prompt (text or token ids) continued as it is, no chat
template and no tool parsing. Benchmark clients (vLLM's and SGLang's `bench serve`) and lm-eval's generation tasks
speak it, and lm-eval's log-likelihood tasks through `echo` with `logprobs`: the prompt comes back before the
completion, with each prompt token's log-probability (none for the first). One prompt and one choice per request.
"""

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from runtime.engine.llm_engine import RequestOutput
from runtime.sampling import TokenLogprobs
from runtime.server.chat import usage_of
from runtime.server.protocol import ApiError, CompletionRequest


def prompt_ids(request: CompletionRequest, tokenizer) -> list[int]:
    """The prompt as token ids: text encoded as written (special-token text stays text), ids checked against the
    vocabulary (an id past it would fail inside the model, for every request of its batch)."""
    if isinstance(request.prompt, str):
        return tokenizer.encode(request.prompt)
    bad = [i for i in request.prompt if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise ApiError(f"token ids outside the vocabulary (size {tokenizer.vocab_size}): {bad[:5]}", param="prompt")
    return list(request.prompt)


def echo_of(request: CompletionRequest, ids: list[int], tokenizer) -> tuple[str, list[int]] | None:
    """What `echo` puts before the completion: the prompt as sent (token ids decoded), and its ids."""
    if not request.echo:
        return None
    return (request.prompt if isinstance(request.prompt, str) else tokenizer.decode(ids)), ids


@dataclass
class TextChoice:
    """One choice's text and log-probabilities over the deltas of a request, in this API's shapes."""

    logprobs: int | None  # alternatives per token; None: no log-probabilities asked
    echo: tuple[str, list[int]] | None = None  # the prompt's text and ids, to come back before the completion
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)  # None: the prompt's first token
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    last: RequestOutput | None = None

    def feed(self, out: RequestOutput, tokenizer) -> dict[str, Any]:
        """Take one engine delta; the choice entry that streams it."""
        first, echoed = len(self.tokens), ""
        if self.echo is not None and self.last is None:
            echoed, prompt_ids = self.echo
            if self.logprobs is not None:
                self._add(tokenizer, prompt_ids, out.prompt_logprobs)
        self.last = out
        if self.logprobs is not None:
            self._add(tokenizer, out.new_token_ids, out.new_logprobs)
        self.text += echoed + out.new_text
        return self.choice(echoed + out.new_text, first, out.finished)

    def _add(self, tokenizer, token_ids: list[int], logprobs: list[TokenLogprobs | None]) -> None:
        for token_id, lp in zip(token_ids, logprobs, strict=False):
            # where the token starts in the text, counted over the tokens' own texts (a character split across
            # tokens decodes to replacement characters in each)
            self.text_offset.append(self.text_offset[-1] + len(self.tokens[-1]) if self.tokens else 0)
            self.tokens.append(tokenizer.decode([token_id]))
            self.token_logprobs.append(lp.logprob if lp is not None else None)
            self.top_logprobs.append({tokenizer.decode([i]): v for i, v in lp.top} if lp is not None else None)

    def choice(self, text: str, first_token: int = 0, finished: bool = True) -> dict[str, Any]:
        logprobs = None
        if self.logprobs is not None:
            logprobs = {"tokens": self.tokens[first_token:], "token_logprobs": self.token_logprobs[first_token:],
                        "top_logprobs": self.top_logprobs[first_token:], "text_offset": self.text_offset[first_token:]}
        return {"index": 0, "text": text, "logprobs": logprobs,
                "finish_reason": self.finish_reason if finished else None}

    @property
    def finish_reason(self) -> str:
        return "length" if self.last is not None and self.last.finish_reason == "length" else "stop"

    def usage(self) -> dict[str, Any]:
        return usage_of(self.last)


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def body(cid: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices, **extra}


def chunk(cid: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
    return {"data": json.dumps(body(cid, created, model, choices, **extra), ensure_ascii=False)}
