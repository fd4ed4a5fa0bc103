"""Engine-like AttentionContexts for layer tests in the batch-invariant mode: one chunk prefilled, one token decoded."""

import torch

from runtime.layers.attention import AttentionContext, PrefillSpan


def invariant_prefill(context_slots: torch.Tensor, prefix: int) -> AttentionContext:
    """The chunk after `prefix` cached tokens of a context whose slots are `context_slots` [C], as one prefill."""
    return AttentionContext(slot_mapping=context_slots[prefix:], num_decode=0, decode_slots=None,
                            prefills=(PrefillSpan(0, context_slots.numel() - prefix, context_slots),),
                            batch_invariant=True)


def invariant_decode(context_slots: torch.Tensor, length: int) -> AttentionContext:
    """Token `length - 1` of that context decoded alone, over the first `length` slots."""
    return AttentionContext(
        slot_mapping=context_slots[length - 1 : length], num_decode=1, decode_slots=context_slots[None, :length],
        prefills=(),
        decode_lengths=torch.tensor([length]), batch_invariant=True,
    )
