"""Structured output: a request's completion held to a JSON schema (or any JSON), a regular expression, one of fixed
choices or an EBNF grammar, by masking each step's logits to the tokens that keep it valid (xgrammar, as vLLM and
SGLang use it).

The vocabulary xgrammar sees is each token id's raw bytes from our own tokenizers (byte-level BPE and tiktoken
alike); special tokens and the padding rows past the tokenizer are empty strings, which xgrammar never lets a
grammar emit: only the end-of-sequence tokens close a completion, and only once the grammar is complete. A spec may
name special tokens it writes (Kimi's tool-call markers, runtime/server/forced_calls.py): it is compiled over a
vocabulary in which those are their text.
Shapes: B = rows of a step, V = the model's vocabulary (logits width), W = ceil(V / 32) bitmask words.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Protocol

import torch
import xgrammar as xgr

from runtime.sampling import StructuredOutput

MAX_WHITESPACE = 8  # runs of whitespace a JSON grammar allows between tokens: a weak model can pad forever
# What one compiler keeps of the specs it compiled, least recently used dropped first (xgrammar keeps all of them
# by default: a compiled JSON schema holds ~1.9 MB over a 151k-token vocabulary, so clients sending schemas of their
# own grew the server by that much per schema, for ever). vLLM's default bound (VLLM_XGRAMMAR_CACHE_MB); `runtime
# serve --grammar-cache-mib` sets another.
GRAMMAR_CACHE_BYTES = 512 << 20


class StructuredOutputError(ValueError):
    """A schema, regex or grammar that does not compile; the message says why."""


class ByteVocabulary(Protocol):
    vocab_size: int
    eos_ids: frozenset[int]

    def token_bytes(self, token_id: int) -> bytes: ...

    def is_special(self, token_id: int) -> bool: ...


class Grammars:
    """Compiles requests' structured-output specs into matchers over one model's vocabulary. Built at the first
    structured request (it reads the whole vocabulary once); thread-safe, compiled specs cached (up to `cache_bytes`
    per compiler, GRAMMAR_CACHE_BYTES when None)."""

    def __init__(self, tokenizer: ByteVocabulary, vocab_size: Callable[[], int], *,
                 cache_bytes: int | None = None) -> None:
        """`vocab_size`: the model's logits width (read at the first structured request)."""
        self._tokenizer, self._vocab_size = tokenizer, vocab_size
        self._cache_bytes = GRAMMAR_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._compilers: dict[frozenset[str], xgr.GrammarCompiler] = {}  # by the special tokens written as text
        self._lock = threading.Lock()

    def matcher(self, spec: StructuredOutput | None) -> xgr.GrammarMatcher | None:
        """A fresh matcher for `spec` (None for None); StructuredOutputError when it does not compile."""
        if spec is None:
            return None
        try:
            return xgr.GrammarMatcher(self._compile(spec))
        except (RuntimeError, ValueError, xgr.InvalidJSONError, xgr.InvalidStructuralTagError) as exc:
            raise StructuredOutputError(f"structured output ({spec.kind}): {_first_line(exc)}") from None

    def _compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        compiler = self._get_compiler(frozenset(spec.specials))
        if spec.kind == "json":
            if not spec.spec:
                return compiler.compile_builtin_json_grammar()
            return compiler.compile_json_schema(spec.spec, max_whitespace_cnt=MAX_WHITESPACE)
        if spec.kind == "regex":
            return compiler.compile_regex(spec.spec)
        if spec.kind == "choice":
            alternatives = " | ".join(json.dumps(choice) for choice in json.loads(spec.spec))
            return compiler.compile_grammar(f"root ::= {alternatives}")
        if spec.kind == "structural_tag":
            return compiler.compile_structural_tag(spec.spec)
        return compiler.compile_grammar(spec.spec)  # "grammar": EBNF (GBNF)

    def _get_compiler(self, specials: frozenset[str]) -> xgr.GrammarCompiler:
        """The compiler over the vocabulary in which the special tokens named in `specials` are their text (a grammar
        can write them) and every other special token is empty (none can)."""
        with self._lock:
            if specials not in self._compilers:
                vocab_size, tokenizer = self._vocab_size(), self._tokenizer
                vocab = [_token_text(tokenizer, i, specials) for i in range(tokenizer.vocab_size)]
                vocab += [b""] * (vocab_size - len(vocab))  # logits rows no token maps to
                info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=vocab_size,
                                         stop_token_ids=sorted(tokenizer.eos_ids))
                self._compilers[specials] = xgr.GrammarCompiler(info, max_threads=1,
                                                                cache_limit_bytes=self._cache_bytes)
            return self._compilers[specials]


def _token_text(tokenizer: ByteVocabulary, token_id: int, specials: frozenset[str]) -> bytes:
    try:
        text = tokenizer.token_bytes(token_id)
    except (KeyError, ValueError):  # an id the vocabulary leaves unassigned
        return b""
    if tokenizer.is_special(token_id) and text.decode("utf-8", errors="replace") not in specials:
        return b""
    return text


def allowed_tokens(matchers: list[xgr.GrammarMatcher | None], vocab_size: int) -> torch.Tensor | None:
    """Which tokens each row may take next: bool [B, V] (all True for an unconstrained row), or None when no row
    is constrained."""
    if not any(matchers):
        return None
    bitmask = xgr.allocate_token_bitmask(len(matchers), vocab_size)  # [B, W] int32, all tokens allowed
    for row, matcher in enumerate(matchers):
        if matcher is not None:
            matcher.fill_next_token_bitmask(bitmask, row)
    return _unpacked(bitmask, matchers, vocab_size)


def draft_rows_allowed(matcher: xgr.GrammarMatcher, drafts: list[int], vocab_size: int) -> torch.Tensor:
    """For verifying speculative drafts: row i allows what the grammar allows after the drafts before it, bool
    [k + 1, V]. Rows after a draft the grammar refuses allow anything: verification stops at that draft. The matcher
    is left as it was."""
    bitmask = xgr.allocate_token_bitmask(len(drafts) + 1, vocab_size)  # [k + 1, W]
    accepted = 0
    for row in range(len(drafts) + 1):
        matcher.fill_next_token_bitmask(bitmask, row)
        if row == len(drafts) or not matcher.accept_token(drafts[row]):
            break
        accepted += 1
        if matcher.is_terminated():  # the draft was an end token: nothing is computed after it
            break
    matcher.rollback(accepted)
    return _unpacked(bitmask, [matcher] * (len(drafts) + 1), vocab_size)


def _unpacked(bitmask: torch.Tensor, matchers: list[xgr.GrammarMatcher | None], vocab_size: int) -> torch.Tensor:
    """bitmask [R, W] int32 -> bool [R, V]; a row no token may continue allows its end tokens (the output ends)."""
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:, :, None] >> bits) & 1).bool().reshape(len(matchers), -1)[:, :vocab_size]  # [R, V]
    for row in (~allowed.any(dim=-1)).nonzero()[:, 0].tolist():
        allowed[row, matchers[row].stop_token_ids] = True
    return allowed


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
