"""Shared helpers for kernel parity tests: random INT4 weights, scattered slot lists of a paged cache, and a
comparison that reports its errors."""

import torch

from kernels.pack import pack_int4, quantize_int4


def random_int4(n: int, k: int, *, group_size: int = 32, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """A random weight [N, K] with unit-size outputs for unit inputs, quantised -> (packed [N, K/8], scale)."""
    w = torch.randn(n, k, generator=generator) / k**0.5  # [N, K]
    q, scale = quantize_int4(w.to(dtype), group_size)
    return pack_int4(q), scale


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float) -> None:
    """assert_close with the max and mean absolute error in the failure message."""
    error = (actual.float() - expected.float()).abs()
    summary = f"max abs error {error.max().item():.3g}, mean {error.mean().item():.3g}" if error.numel() else ""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda msg: f"{msg}\n{summary}")


def scattered_slot_lists(lengths: list[int], slots_total: int, generator: torch.Generator) -> torch.Tensor:
    """Each sequence's slot list [B, max(lengths)] over a cache of `slots_total` shuffled slots, padded with slot 0
    as the engine pads."""
    order = torch.randperm(slots_total, generator=generator)
    slots = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    start = 0
    for row, length in enumerate(lengths):
        slots[row, :length] = order[start : start + length]
        start += length
    return slots
