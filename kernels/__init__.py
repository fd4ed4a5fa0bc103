"""INT4 kernels (torch + triton only): packing, W4A16 linear, fused MoE; dispatched by device (kernels.backend).
The native CPU kernels (paged_attention, bf16_skinny, cpu_native) are imported from their own modules."""

from kernels.backend import KernelInputError, use_backend
from kernels.moe import Int4Experts, fused_moe, moe_reference, prepare_experts
from kernels.w4a16 import Int4Weight, int4_linear, prepare_int4, w4a16_linear, w4a16_reference

__all__ = [
    "Int4Experts", "Int4Weight", "KernelInputError", "fused_moe", "int4_linear", "moe_reference",
    "prepare_experts", "prepare_int4", "use_backend", "w4a16_linear", "w4a16_reference",
]
