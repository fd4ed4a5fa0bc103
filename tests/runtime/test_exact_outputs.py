"""The embedded model's greedy token ids in BF16, alone and in a batch of 8, equal those recorded before the engine's
CPU speed-ups (tests/runtime/data/exact_outputs.json): a speed-up may change how fast a token comes, never which one.

The prompts carry a ~1,100-token page (decode attention over many key tiles, prefill in chunks after a cached prefix)
and ask for text copied from it (speculative drafts are checked and taken). The ids were recorded on a 2-core AVX-512
EPYC with AVX512-BF16 and no AMX, where BF16 decodes run on the native kernels (kernels/bf16_skinny.py,
kernels/paged_attention.py); other CPUs compute BF16 on other paths, which round otherwise, so there the test is
skipped. Record again (only for a change meant to change outputs) with
`python -m tests.runtime.test_exact_outputs`.
"""

import json
from pathlib import Path

import pytest
import torch

from kernels.bf16_skinny import native_bf16_skinny
from kernels.native_build import cpu_flags
from kernels.paged_attention import native_paged_attention
from runtime.engine import EngineConfig, LLMEngine
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.slow

RECORDED = Path(__file__).with_name("data") / "exact_outputs.json"
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
THREADS = 2
FACTS = [
    "The Esma Sultan Mansion is a historical yali located at Bosphorus in Ortakoy, Istanbul.",
    "Scott Derrickson is an American director, screenwriter and producer born in Denver.",
    "Ed Wood was an American filmmaker, actor and author known for low-budget films.",
    "The break statement ends the nearest enclosing for or while loop at once.",
    "The continue statement skips the rest of the loop body and goes on with the next iteration.",
    "A loop's else clause runs when the loop ends normally, not when break ends it.",
]
QUESTIONS = [
    "Copy the sentence about the Esma Sultan Mansion exactly.",
    "Where was Scott Derrickson born? Quote the page.",
    "What does the continue statement do? Answer in one sentence.",
    "Write a search tool call as JSON for the query \"Ed Wood nationality\".",
    "When does a loop's else clause run?",
    "List the people the page names.",
    "What does break do inside a while loop?",
    "Summarise paragraph 12 in one sentence.",
]


def page() -> str:
    return "\n".join(f"Paragraph {i}: {FACTS[i % len(FACTS)]}" for i in range(48))


def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode_chat([{"role": "system", "content": "Answer from this page.\n" + page()},
                                   {"role": "user", "content": q}]) for q in QUESTIONS]


def greedy_ids(model, tokenizer) -> dict[str, list[list[int]]]:
    """The first prompt alone, then all 8 in one batch, each in a fresh engine (default config)."""
    torch.set_num_threads(THREADS)  # the kernels' results do not depend on it; pinned all the same

    def run(batch: list[list[int]]) -> list[list[int]]:
        engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_bytes=64 << 20))
        return [c.token_ids for c in engine.generate(batch, GREEDY)]

    every = prompts(tokenizer)
    return {"alone": run(every[:1]), "batch_of_8": run(every)}


def native_bf16_decodes() -> bool:
    return (native_bf16_skinny() is not None and native_paged_attention() is not None
            and "amx_bf16" not in cpu_flags())


@pytest.mark.skipif(not native_bf16_decodes(), reason="BF16 runs on other paths than where the ids were recorded")
def test_greedy_ids_equal_the_recorded_ones(embedded_model_bf16, embedded_tokenizer):
    assert greedy_ids(embedded_model_bf16, embedded_tokenizer) == json.loads(RECORDED.read_text())


if __name__ == "__main__":
    from runtime.embedded import DEFAULT_MODEL, resolve_model
    from runtime.engine.factory import load_tokenizer
    from runtime.models.registry import load_model

    folder = resolve_model(DEFAULT_MODEL)
    ids = greedy_ids(load_model(folder, torch.bfloat16), load_tokenizer(folder))
    RECORDED.write_text(json.dumps(ids) + "\n")
    print(f"recorded {sum(map(len, ids['batch_of_8']))} + {len(ids['alone'][0])} token ids in {RECORDED}")
