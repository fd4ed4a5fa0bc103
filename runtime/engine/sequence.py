"""A request as the engine tracks it: its tokens, how many of them have K/V in the cache, its blocks."""

import itertools
from enum import Enum, StrEnum

import torch

from runtime.sampling import SamplingParams, TokenLogprobs, make_generator


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(StrEnum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the model's context
    ABORT = "abort"


_seq_ids = itertools.count()


class Sequence:
    """Tokens [0, num_computed_tokens) have K/V in the cache; the rest are scheduled in the next steps.

    A step computes `num_scheduled_tokens` more; when that reaches the end of `token_ids`, the step also samples
    the next token. Prefill, chunked prefill and decode are all this one rule.
    """

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams):
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r}: empty prompt")
        self.seq_id = next(_seq_ids)  # admission order, stable across preemption
        self.request_id = request_id
        self.params = params
        self.generator: torch.Generator | None = make_generator(params.seed)
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_scheduled_tokens = 0
        self.num_cached_prompt_tokens = 0  # prompt tokens reused from the prefix cache at first admission
        self.admitted = False
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chain hash of each full block of token_ids, filled lazily
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.logprobs: list[TokenLogprobs] = []
        # of each prompt token given the ones before it (none for the first), when asked: filled as prefill computes
        self.prompt_logprobs: list[TokenLogprobs | None] = [None] * (
            self.num_prompt_tokens if params.prompt_logprobs is not None else 0)
        self.num_draft_tokens = 0  # speculative drafts at the end of token_ids, this step only (speculative.py)
        self.matcher = None  # the grammar's state after the completion so far, for structured output (structured.py)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def history(self) -> tuple[list[int], list[int]]:
        """(prompt, completion so far without drafts): what its penalties count (runtime/penalties.py)."""
        end = len(self.token_ids) - self.num_draft_tokens
        return self.token_ids[: self.num_prompt_tokens], self.token_ids[self.num_prompt_tokens : end]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Its last token is a sampled one, not yet computed: the next step decodes it."""
        return self.num_uncomputed_tokens == 1 and self.num_completion_tokens > 0

    @property
    def draft_token_ids(self) -> list[int]:
        return self.token_ids[len(self.token_ids) - self.num_draft_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def add_drafts(self, drafts: list[int]) -> None:
        """Put proposed tokens after the last sampled one, to be computed (checked) with it in the next step."""
        if self.num_draft_tokens:
            raise RuntimeError(f"sequence {self.request_id!r} already holds drafts")
        self.token_ids.extend(drafts)
        self.num_draft_tokens = len(drafts)

    def drop_drafts(self) -> list[int]:
        """Take the drafts off token_ids again (checked, or never computed), before the step's blocks are hashed into
        the prefix cache; their cache slots are rewritten when the positions are computed for the tokens actually
        taken. Returns them."""
        if not self.num_draft_tokens:
            return []
        drafts = self.draft_token_ids
        del self.token_ids[-self.num_draft_tokens :]
        self.num_draft_tokens = 0
        return drafts
