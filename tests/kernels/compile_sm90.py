"""Compile the Triton kernels ahead of time for an H100 (sm_90) with the ptxas bundled in the triton wheel.

Run as `python -m tests.kernels.compile_sm90` in a process without TRITON_INTERPRET (test_triton_compile.py does):
it proves the kernels type-check and lower to a cubin at decode and prefill block configs, which the CPU
interpreter cannot show, and that FP32 activations are multiplied in FP32 (torch's default precision), not TF32.
Prints one line per compiled variant.
"""

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import moe_triton, w4a16_triton

TARGET = GPUTarget("cuda", 90, 32)  # H100 / H200, 32-thread warps
DTYPES = ("bf16", "fp16", "fp32")
FP32_PRECISION = "ieee"  # kernels.w4a16_triton.dot_precision() under torch's default


def _dense(dtype: str, blocks: tuple[int, int, int]) -> ASTSource:
    signature = {"x_ptr": f"*{dtype}", "packed_ptr": "*i32", "scale_ptr": "*bf16", "y_ptr": f"*{dtype}"}
    signature |= dict.fromkeys(("M", "N", "K", "stride_xm", "stride_pn", "stride_sn", "stride_ym"), "i32")
    constexprs = {"GROUP_SIZE": 32, "BLOCK_M": blocks[0], "BLOCK_N": blocks[1], "BLOCK_K": blocks[2], "DOT_FP32": False,
                  "DOT_PRECISION": FP32_PRECISION}
    return ASTSource(w4a16_triton.w4a16_gemm_kernel, signature | dict.fromkeys(constexprs, "constexpr"), constexprs)


def _grouped(dtype: str, blocks: tuple[int, int, int], mul_slot_weight: bool) -> ASTSource:
    signature = {"a_ptr": f"*{dtype}", "packed_ptr": "*i32", "scale_ptr": "*bf16",
                 "out_ptr": "*fp32" if mul_slot_weight else f"*{dtype}", "sorted_slots_ptr": "*i32",
                 "block_experts_ptr": "*i64", "slot_weights_ptr": "*fp32"}
    signature |= dict.fromkeys(("N", "K", "num_slots", "stride_am", "stride_pe", "stride_pn", "stride_se",
                                "stride_sn", "stride_om"), "i32")
    constexprs = {"SLOTS_PER_A_ROW": 1 if mul_slot_weight else 8, "MUL_SLOT_WEIGHT": mul_slot_weight,
                  "GROUP_SIZE": 32, "BLOCK_M": blocks[0], "BLOCK_N": blocks[1], "BLOCK_K": blocks[2], "DOT_FP32": False,
                  "DOT_PRECISION": FP32_PRECISION}
    return ASTSource(moe_triton.grouped_w4a16_kernel, signature | dict.fromkeys(constexprs, "constexpr"), constexprs)


def _compile(source: ASTSource, dtype: str) -> None:
    ptx = triton.compile(source, target=TARGET).asm["ptx"]
    if dtype == "fp32" and "tf32" in ptx:
        raise SystemExit(f"{source.fn.__name__}: FP32 activations are multiplied as TF32")


def main() -> None:
    for dtype in DTYPES:
        for m in (1, 512):
            blocks = w4a16_triton.block_config(m)
            _compile(_dense(dtype, blocks), dtype)
            print(f"w4a16_gemm_kernel {dtype} blocks {blocks}: ok")
        for slots_per_expert, mul in ((1.0, False), (64.0, True)):
            blocks = moe_triton.block_config(slots_per_expert)
            _compile(_grouped(dtype, blocks, mul), dtype)
            print(f"grouped_w4a16_kernel {dtype} blocks {blocks} slot weights {mul}: ok")


if __name__ == "__main__":
    main()
