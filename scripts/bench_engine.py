"""Engine benchmark on the embedded model, everything in one run, printed as a table of ratios.

(a) batch-1 decode tokens/s: ours vs transformers `generate` (same dtype, same threads)
(b) 8 concurrent requests: aggregate decode tokens/s vs our batch 1 and vs transformers on a padded batch of 8
(c) 8 requests sharing a ~1,000-token prefix: prompt tokens computed and time to first token, prefix cache on vs off
(d) peak RSS
(e) the physical bound: copy bandwidth ÷ weight bytes read per decode step, our batch-1 rate as a share of it
(f) llama-cpp-python on the same GGUF, when installed
(g) the batch-invariant mode (fixed-tile linears, per-sequence decode attention) against the default: decode, prefill
plus our engine on the INT4 variant of the model (MLP weights INT4 through the kernels' CPU path, scripts/quantize.py).

On a busy shared machine wall-clock rates say more about the neighbours than about the code: `--clock cpu` runs
everything on one thread and times it in that thread's CPU time, which other processes do not inflate.

    python scripts/bench_engine.py [--model NAME_OR_PATH] [--tokens 64] [--threads 2] [--clock wall|cpu]
"""

import argparse
import importlib.util
import resource
import time
from pathlib import Path

import torch

from runtime.embedded import DEFAULT_MODEL, resolve_model
from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.factory import load_tokenizer
from runtime.models.registry import load_model
from runtime.paths import models_dir
from runtime.sampling import SamplingParams

BATCH = 8
SHARED_PREFIX_TOKENS = 1000
SUFFIX_QUESTIONS = [f"Question {i}: summarise paragraph {i + 1} in one sentence." for i in range(BATCH)]
COPY_BYTES = 1 << 30
PROMPT = "Write a Python function that checks whether a number is prime, with a docstring and tests."
INT4_GROUP = 32
clock = time.perf_counter  # or time.thread_time with --clock cpu


def decode_rate(engine: LLMEngine, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate decode tokens/s: from the first sampled token of the last prefill to the end (prefill excluded)."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    for p in prompts:
        engine.add_request(p, params)
    while any(s.num_completion_tokens == 0 for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    produced_before = sum(s.num_completion_tokens for s in engine.scheduler.running)
    start = clock()
    while engine.has_unfinished():
        engine.step()
    return (len(prompts) * tokens - produced_before) / (clock() - start)


def prefill_rate(engine: LLMEngine, prompts: list[list[int]]) -> float:
    """Prompt tokens/s: all prompts prefilled, each to its first sampled token."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for p in prompts:
        engine.add_request(p, params)
    start = clock()
    while engine.has_unfinished():
        engine.step()
    return sum(map(len, prompts)) / (clock() - start)


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A static batch for transformers: ids and attention mask, padded on the left."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def hf_decode_rate(model, prompts: list[list[int]], tokens: int, pad_id: int) -> float:
    """transformers generate on a left-padded batch; decode time = full run minus a one-token run."""
    ids, mask = left_padded(prompts, pad_id)

    def run(new_tokens: int) -> float:
        start = clock()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad_id)
        return clock() - start

    with torch.inference_mode():
        run(2)  # warm-up
        one = run(1)
        full = run(tokens)
    return len(prompts) * (tokens - 1) / (full - one)


def mixed_lengths_rates(engine: LLMEngine, hf, prompts: list[list[int]], tokens: int, pad_id: int):
    """Useful tokens/s when the 8 requests want different lengths (as trajectories do), prefill included.

    Ours: each request leaves the batch when done. transformers: a static batch runs until its longest row.
    """
    wanted = [max(1, tokens * (i + 1) // len(prompts)) for i in range(len(prompts))]
    start = clock()
    engine.generate(prompts, [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in wanted])
    ours = sum(wanted) / (clock() - start)
    ids, mask = left_padded(prompts, pad_id)
    start = clock()
    with torch.inference_mode():
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(wanted), min_new_tokens=max(wanted),
                    do_sample=False, pad_token_id=pad_id)
    return ours, sum(wanted) / (clock() - start)


def shared_prefix(engine_factory, tokenizer) -> dict[str, dict[str, float]]:
    """8 requests with one ~1,000-token prefix, all submitted at once: computed prompt tokens and TTFT."""
    sentence = "Paragraph {}: the committee reviewed item {} and approved it after a short discussion."
    filler = " ".join(sentence.format(i, i) for i in range(200))
    prefix_ids = tokenizer.encode(filler)[:SHARED_PREFIX_TOKENS]
    prompts = [prefix_ids + tokenizer.encode("\n" + q) for q in SUFFIX_QUESTIONS]
    results = {}
    for label, cache_on in (("on", True), ("off", False)):
        engine = engine_factory(enable_prefix_cache=cache_on)
        params = SamplingParams(temperature=0.0, max_tokens=1)
        start = clock()
        ids = [engine.add_request(p, params) for p in prompts]
        first: dict[str, float] = {}
        while len(first) < len(ids):
            for out in engine.step():
                first.setdefault(out.request_id, clock() - start)
        results[label] = {
            "computed": engine.stats.prompt_tokens_computed,
            "reused": engine.stats.prompt_tokens_reused,
            "ttft_mean": sum(first.values()) / len(first),
            "ttft_last": max(first.values()),
            "suffix": sum(map(len, prompts)) / len(prompts) - SHARED_PREFIX_TOKENS,
        }
    return results


def copy_bandwidth() -> float:
    """Bytes/s of a large tensor copy (read + write counted)."""
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        start = clock()
        dst.copy_(src)
        best = min(best, clock() - start)
    return 2 * COPY_BYTES / best


def weight_bytes_per_step(model) -> int:
    """Every weight is read once per decode step except the embedding table (one row per token)."""
    embed = model.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - embed.numel() * embed.element_size()


def int4_model(folder: Path):
    """The INT4-MLP variant made by scripts/quantize.py (quantised here on first use)."""
    spec = importlib.util.spec_from_file_location("quantize", Path(__file__).with_name("quantize.py"))
    quantize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quantize)
    dest = models_dir() / f"{folder.name}-int4"
    if not (dest / "config.json").is_file():
        quantize.quantize_folder(folder, dest, INT4_GROUP)
    return load_model(dest, torch.bfloat16)  # the quantization_config builds the INT4 layers


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # ru_maxrss is in KiB on Linux


def llama_cpp_rate(tokens: int, threads: int) -> float | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    from runtime.embedded import KNOWN_MODELS
    from runtime.embedded.chunks import join_chunks
    from runtime.paths import heavy_home

    spec = KNOWN_MODELS[DEFAULT_MODEL]
    path = heavy_home() / "downloads" / spec.gguf_file
    if not path.is_file():
        join_chunks(spec, path)
    llm = Llama(model_path=str(path), n_threads=threads, verbose=False)
    llm(PROMPT, max_tokens=2)
    start = clock()
    out = llm(PROMPT, max_tokens=tokens, temperature=0.0)
    return out["usage"]["completion_tokens"] / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens per request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: one thread, timed in thread CPU time (robust when other processes load the machine)")
    args = parser.parse_args()
    global clock
    if args.clock == "cpu":
        clock, args.threads = time.thread_time, 1
    torch.set_num_threads(args.threads)
    folder = resolve_model(args.model)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, torch.bfloat16)

    def engine(weights=model, **overrides) -> LLMEngine:
        return LLMEngine(weights, tokenizer, EngineConfig(kv_cache_bytes=256 << 20, **overrides))

    prompt = tokenizer.encode(PROMPT)
    batch_prompts = [tokenizer.encode(f"{PROMPT} Variant {i}.") for i in range(BATCH)]
    decode_rate(engine(), [prompt], 4)  # warm-up
    ours_1 = decode_rate(engine(), [prompt], args.tokens)
    ours_8 = decode_rate(engine(), batch_prompts, args.tokens)
    prefix = shared_prefix(engine, tokenizer)
    rss_ours_gb = peak_rss_gb()  # our BF16 engine alone, before the INT4 model and transformers are loaded
    model4 = int4_model(folder)
    decode_rate(engine(model4), [prompt], 4)  # warm-up (compiles the CPU kernel on first use)
    int4_1 = decode_rate(engine(model4), [prompt], args.tokens)
    int4_8 = decode_rate(engine(model4), batch_prompts, args.tokens)
    del model4
    long_prompts = [tokenizer.encode(f"{PROMPT * 30} Variant {i}.") for i in range(BATCH)]
    plain_prefill = prefill_rate(engine(enable_prefix_cache=False), long_prompts)
    invariant = load_model(folder, torch.bfloat16)  # the mode changes its model in place
    inv_1 = decode_rate(engine(invariant, batch_invariant=True), [prompt], args.tokens)
    inv_8 = decode_rate(engine(invariant, batch_invariant=True), batch_prompts, args.tokens)
    inv_prefill = prefill_rate(engine(invariant, batch_invariant=True, enable_prefix_cache=False), long_prompts)
    del invariant

    import transformers

    hf = transformers.Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    pad = next(iter(tokenizer.eos_ids))
    hf_1 = hf_decode_rate(hf, [prompt], args.tokens, pad)
    hf_8 = hf_decode_rate(hf, batch_prompts, args.tokens, pad)
    mixed_ours, mixed_hf = mixed_lengths_rates(engine(), hf, batch_prompts, args.tokens, pad)
    del hf
    bandwidth = copy_bandwidth()
    bound = bandwidth / weight_bytes_per_step(model)
    llama = llama_cpp_rate(args.tokens, args.threads)

    on, off = prefix["on"], prefix["off"]
    rows = [
        ("(a) batch-1 decode tok/s", f"{ours_1:.1f}", f"transformers {hf_1:.1f}", f"{ours_1 / hf_1:.2f}x"),
        ("(a) batch-1 decode tok/s, ours INT4 MLP", f"{int4_1:.1f}", f"transformers bf16 {hf_1:.1f}",
         f"{int4_1 / hf_1:.2f}x"),
        ("(b) 8 concurrent, aggregate tok/s", f"{ours_8:.1f}", f"our batch-1 {ours_1:.1f}", f"{ours_8 / ours_1:.2f}x"),
        ("(b) 8 concurrent, aggregate tok/s", f"{ours_8:.1f}", f"transformers padded 8: {hf_8:.1f}",
         f"{ours_8 / hf_8:.2f}x"),
        ("(b) 8 requests of 1/8..8/8 x tokens, useful tok/s", f"{mixed_ours:.1f}",
         f"transformers static batch {mixed_hf:.1f}", f"{mixed_ours / mixed_hf:.2f}x"),
        ("(b) 8 concurrent, ours INT4 MLP", f"{int4_8:.1f}", f"transformers padded 8: {hf_8:.1f}",
         f"{int4_8 / hf_8:.2f}x"),
        ("(c) prompt tokens computed, 8 x (1000 + suffix)", f"{on['computed']}",
         f"cache off {off['computed']} (ideal {SHARED_PREFIX_TOKENS + BATCH * on['suffix']:.0f})",
         f"{off['computed'] / on['computed']:.2f}x fewer"),
        ("(c) time to first token, mean / last (s)", f"{on['ttft_mean']:.2f} / {on['ttft_last']:.2f}",
         f"cache off {off['ttft_mean']:.2f} / {off['ttft_last']:.2f}", f"{off['ttft_last'] / on['ttft_last']:.2f}x"),
        ("(g) batch-invariant mode, batch-1 decode tok/s", f"{inv_1:.1f}", f"default {ours_1:.1f}",
         f"{inv_1 / ours_1:.2f}x"),
        ("(g) batch-invariant mode, 8 concurrent tok/s", f"{inv_8:.1f}", f"default {ours_8:.1f}",
         f"{inv_8 / ours_8:.2f}x"),
        (f"(g) batch-invariant mode, prefill tok/s, 8 x {len(long_prompts[0])}", f"{inv_prefill:.0f}",
         f"default {plain_prefill:.0f}", f"{inv_prefill / plain_prefill:.2f}x"),
        ("(d) peak RSS GB: our bf16 engine (256 MB KV)", f"{rss_ours_gb:.2f}", f"whole run {peak_rss_gb():.2f}",
         "incl. INT4 model, transformers"),
        ("(e) copy bandwidth GB/s -> bound tok/s", f"{bandwidth / 1e9:.1f} -> {bound:.1f}",
         f"ours batch-1 {ours_1:.1f}", f"{100 * ours_1 / bound:.0f}% of bound"),
        ("(f) llama.cpp Q4_K_M tok/s", f"{llama:.1f}" if llama else "not installed", f"ours {ours_1:.1f}",
         f"{ours_1 / llama:.2f}x" if llama else ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"model {folder.name}, bf16, {args.threads} thread(s), {args.clock} clock, "
          f"{args.tokens} decode tokens per request")
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
