"""A dense checkpoint (the embedded Qwen2.5-Coder-0.5B) on a Ray replica of one rank behind the router: the same
greedy tokens as an engine in this process over the same folder (FP32), and EP > 1 refused (no experts to split)."""

import pytest

from runtime.engine.config import EngineConfig
from runtime.engine.factory import load_tokenizer
from runtime.engine.llm_engine import LLMEngine
from runtime.replica.serving import UnsupportedReplicaModel, start_frontend
from runtime.sampling import SamplingParams

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.anyio]

ENGINE = EngineConfig(max_model_len=512, num_blocks=64, max_num_seqs=4)
PROMPT = [{"role": "user", "content": "Write a Python function that reverses a string."}]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def frontend(ray_cluster, embedded_model_dir):
    front = start_frontend(embedded_model_dir, replicas=1, ep=1, engine=ENGINE, dtype="float32")
    yield front
    front.shutdown()


async def test_a_dense_model_on_a_ray_replica_generates_what_it_does_in_process(frontend, embedded_model_dir,
                                                                                embedded_model_fp32):
    tokenizer = load_tokenizer(embedded_model_dir)
    prompt = tokenizer.encode_chat(PROMPT)
    reference = LLMEngine(embedded_model_fp32, tokenizer, ENGINE).generate([prompt], GREEDY)[0]
    tokens = []
    async for output in frontend.generate(prompt, GREEDY, "dense-0"):
        tokens += output.new_token_ids
    assert tokens == reference.token_ids and len(tokens) == GREEDY.max_tokens


def test_a_dense_model_split_over_two_ranks_is_refused(embedded_model_dir):
    with pytest.raises(UnsupportedReplicaModel, match="qwen2"):
        start_frontend(embedded_model_dir, replicas=1, ep=2)
