"""Expert-parallel benchmark on CPU: one replica at EP = 1, then one at EP = 2, same checkpoint, same requests.

Prints per rank the routed experts it owns, their resident bytes and the rank process's RSS, and per EP the batch's
generated tokens/s (greedy, continuous batching through the replica actor, so both runs pay the same Ray overhead)
and the all-reduce volume of one decode step; then times the two ways to combine MoE outputs over gloo (our
all-reduce vs a dispatch + combine all-to-all pair). On CPU, EP costs more than it saves (every rank recomputes
attention and waits in one all-reduce per MoE layer); the point is correctness and the memory split.

    .venv/bin/python scripts/bench_ep.py [--size tiny|small] [--batch 4] [--tokens 32]

`small` widens the tiny Kimi layout (hidden 256, 64 experts of width 128, 4 layers) so that experts dominate memory.
"""

import argparse
import importlib.util
import os
import socket
import tempfile
import time
from pathlib import Path

import ray
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runtime.engine.config import EngineConfig
from runtime.models.deepseek_v3_config import DeepseekV3Config
from runtime.replica.local_ray import start_local_ray
from runtime.replica.replica import ReplicaActor, ReplicaSpec
from runtime.sampling import SamplingParams

SIZES = {
    "tiny": {},
    "small": {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128, "n_routed_experts": 64,
              "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 8, "q_lora_rank": 96, "kv_lora_rank": 64},
}
ENGINE = EngineConfig(block_size=16, num_blocks=128, max_num_seqs=16, max_num_batched_tokens=512, max_model_len=512)
MIB = 1 << 20
FP32_BYTES = 4  # the MoE partials are summed in fp32
COLLECTIVE_TOKENS = (4, 64)  # decode-sized and prefill-sized steps
COLLECTIVE_WIDTHS = (256, 7168)  # the small layout's hidden size and Kimi K2's
COLLECTIVE_REPEATS = 50


def write_checkpoint(size: str, folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny", Path(__file__).with_name("make_tiny_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_checkpoint(folder, config_overrides=SIZES[size])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(path: Path, ep: int, dtype: str, prompts: list[list[int]],
        params: SamplingParams) -> tuple[list, float, list[list[int]]]:
    replica = ReplicaActor.options(num_cpus=0).remote(ReplicaSpec(str(path), ep, dtype=dtype, engine=ENGINE))
    try:
        infos = ray.get(replica.start.remote(), timeout=600)
        ray.get(replica.generate.remote(prompts[0], SamplingParams(temperature=0, max_tokens=2)))  # warm-up
        start = time.perf_counter()
        completions = ray.get([replica.generate.remote(p, params) for p in prompts])
        elapsed = time.perf_counter() - start
        infos = [(info, rss_bytes(info.pid)) for info in infos]
        return infos, sum(len(c.token_ids) for c in completions) / elapsed, [c.token_ids for c in completions]
    finally:
        ray.kill(replica)


def _time_collectives(rank: int, world: int, port: int, results) -> None:
    """Per (tokens, width): ms of our combine (all-reduce of [T, D] partials) and of the all-to-all alternative with
    data-parallel attention (each rank owns T / EP tokens, sends those routed elsewhere and gets their outputs back;
    at EP = 2 with 8 of 64 experts nearly every token needs the other rank)."""
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for tokens in COLLECTIVE_TOKENS:
        for width in COLLECTIVE_WIDTHS:
            partial = torch.randn(tokens, width)  # [T, D]
            own = torch.randn(tokens // world * world, width)  # [T, D]: T / EP rows per destination rank
            received = torch.empty_like(own)
            timings = {}
            for name, run in (("all-reduce", lambda p=partial: dist.all_reduce(p)),
                              ("all-to-all x2", lambda o=own, r=received: (dist.all_to_all_single(r, o),
                                                                         dist.all_to_all_single(o, r)))):
                run()  # warm-up: the first use of a shape sets up buffers
                dist.barrier()
                start = time.perf_counter()
                for _ in range(COLLECTIVE_REPEATS):
                    run()
                timings[name] = (time.perf_counter() - start) / COLLECTIVE_REPEATS * 1e3
            if rank == 0:
                results.append((tokens, width, timings["all-reduce"], timings["all-to-all x2"]))
    dist.destroy_process_group()


def measure_collectives(world: int = 2) -> list[tuple[int, int, float, float]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().list()
    mp.spawn(_time_collectives, args=(world, port, results), nprocs=world)
    return list(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()
    start_local_ray(num_cpus=8, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(args.size, Path(tmp))
        config = DeepseekV3Config.from_pretrained(path)
        prompts = [[(37 * i + 11 * j) % 900 + 10 for j in range(24)] for i in range(args.batch)]
        params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
        moe_layers = config.num_hidden_layers - config.first_k_dense_replace
        print(f"checkpoint: {args.size}, {config.n_routed_experts} experts x {moe_layers} MoE layers, "
              f"hidden {config.hidden_size}; {args.dtype}; batch {args.batch} x {args.tokens} greedy tokens; "
              "1 torch thread/rank")
        print(f"{'EP':>3} {'rank':>4} {'experts':>9} {'expert MiB':>10} {'RSS MiB':>8} {'tokens/s':>9} "
              f"{'all-reduce KiB/decode step/rank':>32}")
        outputs = {}
        for ep in (1, 2):
            infos, rate, outputs[ep] = run(path, ep, args.dtype, prompts, params)
            # ring all-reduce: each rank sends 2 (EP - 1) / EP of the [B, D] fp32 partials per MoE layer
            volume = 2 * (ep - 1) / ep * args.batch * config.hidden_size * FP32_BYTES * moe_layers
            for info, rss in infos:
                first, last = info.experts
                print(f"{ep:>3} {info.rank:>4} {f'{first}-{last - 1}':>9} {info.expert_bytes / MIB:>10.2f} "
                      f"{rss / MIB:>8.0f} {rate:>9.1f} {volume / 1024:>32.1f}")
        # bf16: each rank adds its experts' outputs in bf16 before the fp32 sum, so near-ties may flip a token
        agree = [next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), len(x))
                 for x, y in zip(outputs[1], outputs[2], strict=True)]
        print(f"greedy tokens equal at EP=1 and EP=2 up to position (per prompt): {agree} of {args.tokens}")
    ray.shutdown()
    print("gloo on loopback, 2 ranks, ms per MoE-layer combine (mean of "
          f"{COLLECTIVE_REPEATS}):\n{'tokens':>6} {'D':>5} {'all-reduce':>10} {'all-to-all x2':>13}")
    for tokens, width, reduce_ms, a2a_ms in measure_collectives():
        print(f"{tokens:>6} {width:>5} {reduce_ms:>10.3f} {a2a_ms:>13.3f}")


if __name__ == "__main__":
    main()
