"""Prompt-lookup speculative decoding: drafts copied from the sequence's own tokens, checked in one forward pass.

An agent's output copies a lot from its context: the tool-call JSON of earlier turns, a query made of the question's
words, a URL from a search result, an answer from a page. When the last few tokens occurred earlier in the
sequence, the tokens that followed them there are proposed as the next ones (no draft model). A decoding sequence
then computes its last token and the k drafts in one step; the logits of those k + 1 rows say how many drafts the
model itself would have produced, plus one token of its own after them. At batch 1 a decode step reads every weight
once for one row; a few more rows cost little more (memory-bound), so each accepted draft is a step saved.

Acceptance keeps the model's distribution exactly: a sequence takes a draft while it is the token it would have
taken without drafts: the argmax, or for a sampled one its draw from p. That is the standard rejection rule for a
one-hot proposal (take draft d with probability min(1, p/q) = p(d), else draw from p with d removed, renormalised)
with the acceptance coupled to the draw: d is taken exactly when the draw is d, and a draw that is not d is
distributed as p without d. A sampled token thus costs one uniform of the sequence's generator, drafts or not, so a
seeded sequence takes the same tokens whichever drafts the batch left it room to check.
"""

import numpy as np
import torch

from runtime.penalties import adjusted_logits
from runtime.sampling import SamplingParams, TokenLogprobs, draw, sampling_probs, token_logprobs

NGRAM_MAX = 4  # the longest suffix looked up; longer matches are likelier to continue the same way
NGRAM_MIN = 2  # one token alone matches too much (every "," or " the")


def propose(token_ids: list[int], k: int, ngram_max: int = NGRAM_MAX, ngram_min: int = NGRAM_MIN) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the sequence's last n tokens, trying the
    longest n first; [] when none of its suffixes occurred before."""
    if k <= 0:
        return []
    ids = np.fromiter(token_ids, dtype=np.int64, count=len(token_ids))  # [L]
    # where an earlier occurrence could end: the earlier positions of the last token. Only those are extended back
    # (comparing every window of the context was 3x slower, 0.6 ms a step per sequence at 6,000 tokens)
    ends = np.flatnonzero(ids[:-1] == ids[-1])  # [M]
    for n in range(min(ngram_max, len(ids) - 1), ngram_min - 1, -1):
        matched = ends[ends >= n - 1]
        for back in range(1, n):
            matched = matched[ids[matched - back] == ids[-1 - back]]
        if matched.size:
            follow = int(matched[-1]) + 1
            return ids[follow : follow + k].tolist()
    return []


def verify(
    logits: torch.Tensor, drafts: list[int], params: SamplingParams, generator: torch.Generator | None,
    allowed: torch.Tensor | None = None, history: tuple[list[int], list[int]] | None = None,
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """The tokens the sequence takes from one verification step: the accepted drafts, then one token of the model's.

    logits: [k + 1, V], row i computed after the sequence's tokens and drafts[:i]; allowed: bool [k + 1, V], what a
    structured-output grammar lets each row take (runtime/structured.py); history: (prompt, completion before the
    drafts) of a request whose bias or penalties adjust its logits: row i is adjusted as if drafts[:i] had been
    generated (runtime/penalties.py). Returns 1 to k + 1 tokens and their logprobs under the model's own
    distribution (None each unless asked for).
    """
    logits = logits.float()
    chosen_from = logits
    if history is not None:
        prompt, completion = history
        chosen_from = torch.stack([adjusted_logits(logits[i], params, prompt, [*completion, *drafts[:i]])
                                   for i in range(len(drafts) + 1)])  # [k + 1, V]
    if allowed is not None:
        chosen_from = chosen_from.masked_fill(~allowed, float("-inf"))
    taken: list[int] = []
    for row in range(len(drafts) + 1):  # the last row gives one more token when every draft is taken
        row_logits = chosen_from[row]
        token = int(row_logits.argmax()) if params.greedy else draw(sampling_probs(row_logits, params), generator)
        taken.append(token)
        if row == len(drafts) or token != drafts[row]:
            break
    return taken, [token_logprobs(logits[i], t, params) for i, t in enumerate(taken)]
