"""W4A16 kernel benchmark: BF16 matmul vs INT4 paths at Kimi K2 expert shapes, plus a paper estimate for GPUs.

For each shape (decode M = 1, 8; prefill M = 512; K = 7168 -> N = 2048 and 2048 -> 7168) one table with the
best time and effective bandwidth (bytes of that method's weight format + activations, divided by time) of:
BF16 `F.linear`, dequantise-then-matmul (kernels.pack reference), torch's `_weight_int4pack_mm_for_cpu`, our CPU
INT4 path (kernels.int4_linear), then the same with FP32 activations (dense FP32 `F.linear`, the FP32 reference, our
CPU path on FP32 weights: the AVX2 kernel on CPUs without AVX-512, up to 128 rows), BF16 `F.linear` and the Triton
kernel on the GPU when one is present (its ratio is against the GPU's BF16); and the roofline time on H100 / H200:
max(bytes / HBM bandwidth, FLOPs / dense BF16 peak). Each CPU method cycles through copies of its weight larger than
the caches, as a decode step streams its weights (timing one weight over and over let part of it stay in the
caches: a 7.3 MB INT4 weight wholly, its 29 MB BF16 one in part). Runs in a few minutes on 2 cores.
With --threads 1 the clock is the thread's CPU time, which ignores time spent descheduled: use it on a shared,
busy machine, where multi-threaded wall times mostly measure the scheduler.

    .venv/bin/python scripts/bench_kernels.py [--threads 2]
"""

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

import kernels
from kernels.cpu_int4 import INT4PACK_INNER_K_TILES
from kernels.pack import DEFAULT_GROUP_SIZE, INT4_OFFSET, dequantize_int4, pack_int4, quantize_int4, unpack_int4

SHAPES = [(7168, 2048), (2048, 7168)]  # (K, N): expert gate/up and down projections
ROWS = [1, 8, 512]
# name -> (HBM bytes/s, dense BF16 FLOP/s): public SXM datasheet figures.
GPUS = {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12)}
T = TypeVar("T")
TIME_BUDGET_S = 1.0  # per measurement
STREAMED_BYTES = 256 << 20  # weight copies cycled per CPU timing: more than the caches hold


def measure(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    """Best (minimum) seconds per call over repetitions that fit the time budget: robust to busy neighbours."""
    clock = time.thread_time if torch.get_num_threads() == 1 and not torch.cuda.is_available() else time.perf_counter
    fn()
    sync()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < TIME_BUDGET_S and len(times) < 200):
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return min(times)


def streamed(fn: Callable[[T], object], make: Callable[[], T], weight_nbytes: int) -> float:
    """Seconds per call of `fn` over copies of one weight (`make` builds one) that together outgrow the caches."""
    copies = [make() for _ in range(max(1, -(-STREAMED_BYTES // weight_nbytes)))]
    return measure(lambda: [fn(copy) for copy in copies]) / len(copies)


def weight_bytes(n: int, k: int, int4: bool) -> int:
    return n * k // 2 + n * (k // DEFAULT_GROUP_SIZE) * 2 if int4 else n * k * 2


def bench_shape(k: int, n: int, m: int) -> list[tuple[str, float, int]]:
    """(method, seconds, bytes) for one shape."""
    generator = torch.Generator().manual_seed(0)
    q, scale = quantize_int4(torch.randn(n, k, generator=generator).to(torch.bfloat16))
    packed = pack_int4(q)
    w_bf16 = dequantize_int4(packed, scale)  # [N, K]
    x = torch.randn(m, k, generator=generator).to(torch.bfloat16)  # [M, K]
    io_bytes = (m * k + m * n) * 2
    bf16_bytes, int4_bytes = weight_bytes(n, k, False) + io_bytes, weight_bytes(n, k, True) + io_bytes
    int4pack = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        unpack_int4(packed).to(torch.int32) + INT4_OFFSET, INT4PACK_INNER_K_TILES)
    scales_and_zeros = torch.stack([scale.t(), torch.zeros_like(scale.t())], dim=-1).contiguous()  # [K/G, N, 2]
    int4_nbytes, bf16_nbytes = weight_bytes(n, k, True), weight_bytes(n, k, False)
    kind = kernels.prepare_int4(packed, scale).cpu.kind
    rows = [
        ("bf16 F.linear", streamed(lambda w: F.linear(x, w), w_bf16.clone, bf16_nbytes), bf16_bytes),
        ("dequantise + matmul", streamed(lambda ps: F.linear(x, dequantize_int4(*ps)),
                                         lambda: (packed.clone(), scale.clone()), int4_nbytes), int4_bytes),
        ("torch int4pack_mm", streamed(lambda w: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, w, DEFAULT_GROUP_SIZE, scales_and_zeros), int4pack.clone, int4_nbytes), int4_bytes),
    ]
    with kernels.use_backend("cpu"):
        rows.append((f"ours: cpu ({kind})", streamed(lambda w: kernels.int4_linear(x, w),
                                                     lambda: kernels.prepare_int4(packed.clone(), scale.clone()),
                                                     int4_nbytes), int4_bytes))
    # FP32 activations, as a model computing in FP32 has them (FP32 weights prepare for the AVX2 kernel, if any)
    x32, w_fp32 = x.float(), w_bf16.float()
    fp32_io = (m * k + m * n) * 4
    kind32 = kernels.prepare_int4(packed, scale.float()).cpu.kind
    rows += [
        ("fp32 F.linear", streamed(lambda w: F.linear(x32, w), w_fp32.clone, 2 * bf16_nbytes), n * k * 4 + fp32_io),
        ("fp32 dequantise + matmul", streamed(lambda ps: kernels.w4a16_reference(x32, *ps),
                                              lambda: (packed.clone(), scale.clone()), int4_nbytes),
         int4_nbytes + fp32_io),
    ]
    with kernels.use_backend("cpu"):
        rows.append((f"ours: cpu fp32 ({kind32})", streamed(
            lambda w: kernels.int4_linear(x32, w), lambda: kernels.prepare_int4(packed.clone(), scale.float()),
            int4_nbytes), int4_nbytes + fp32_io))
    if torch.cuda.is_available():  # one weight each: the GPU's caches are small beside these weights
        gpu_weight, w_gpu, x_gpu = kernels.prepare_int4(packed.cuda(), scale.cuda()), w_bf16.cuda(), x.cuda()
        rows += [
            ("bf16 F.linear (GPU)", measure(lambda: F.linear(x_gpu, w_gpu), torch.cuda.synchronize), bf16_bytes),
            ("ours: triton (GPU)", measure(lambda: kernels.int4_linear(x_gpu, gpu_weight), torch.cuda.synchronize),
             int4_bytes),
        ]
    return rows


def paper_estimate(k: int, n: int, m: int, int4: bool, gpu: str) -> float:
    bandwidth, flops = GPUS[gpu]
    total_bytes = weight_bytes(n, k, int4) + (m * k + m * n) * 2
    return max(total_bytes / bandwidth, 2 * m * n * k / flops)


def print_table(k: int, n: int, m: int, rows: list[tuple[str, float, int]]) -> None:
    baselines = {name.endswith("(GPU)"): seconds for name, seconds, _ in rows if name.startswith("bf16 F.linear")}
    print(f"\nK={k} -> N={n}, M={m}")
    print(f"  {'method':<28} {'best ms':>10} {'GB/s':>8} {'vs bf16':>8}")
    for name, seconds, total_bytes in rows:  # each against BF16 on its own device
        ratio = baselines[name.endswith("(GPU)")] / seconds
        print(f"  {name:<28} {seconds * 1e3:>10.3f} {total_bytes / seconds / 1e9:>8.1f} {ratio:>7.2f}x")
    for gpu in GPUS:
        bf16, int4 = (paper_estimate(k, n, m, int4, gpu) for int4 in (False, True))
        print(f"  paper {gpu}: bf16 {bf16 * 1e6:.1f} us, int4 {int4 * 1e6:.1f} us ({bf16 / int4:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = "thread CPU time" if args.threads == 1 else "wall time"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads ({clock}), "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for k, n in SHAPES:
        for m in ROWS:
            print_table(k, n, m, bench_shape(k, n, m))


if __name__ == "__main__":
    main()
