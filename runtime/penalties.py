"""What a request asks to change in a row's logits before it is sampled (after the model, before temperature):

- `logit_bias`: added to the named tokens' logits (OpenAI's; -100 all but bans a token, +100 all but forces it);
- `repetition_penalty` r over every token of the prompt and the completion so far: a positive logit is divided by r,
  a negative one multiplied (the CTRL paper's rule, as transformers' RepetitionPenaltyLogitsProcessor and vLLM apply
  it; r > 1 discourages repeats);
- `presence_penalty` and `frequency_penalty` over the completion's tokens: a token generated c times loses
  frequency_penalty * c + presence_penalty * (c > 0) (OpenAI's formula; vLLM's, which counts the completion only).

Log-probabilities returned to a client stay those of the model's own distribution.
Shapes: V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # runtime.sampling applies these: imported there
    from runtime.sampling import SamplingParams


def adjusted_logits(logits: torch.Tensor, params: SamplingParams, prompt_ids: Sequence[int],
                    completion_ids: Sequence[int]) -> torch.Tensor:
    """One row's logits [V] fp32 with the request's bias and penalties applied (a new tensor)."""
    row = logits.clone()
    if params.logit_bias:
        ids, biases = params.logit_bias_tensors
        row[ids.to(row.device)] += biases.to(row.device, row.dtype)  # [K]
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted({*prompt_ids, *completion_ids}), dtype=torch.long, device=row.device)
        values = row[seen]
        row[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and completion_ids:
        ids, counts = torch.unique(torch.tensor(completion_ids, device=row.device), return_counts=True)
        row[ids] -= params.frequency_penalty * counts.to(row.dtype) + params.presence_penalty
    return row
