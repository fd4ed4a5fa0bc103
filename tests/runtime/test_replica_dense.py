"""A dense checkpoint (the embedded Qwen2.5-Coder-0.5B) on a Ray replica of one rank behind the router: the same
greedy tokens as an engine in this process over the same folder (FP32), and EP > 1 refused (no experts to split)."""

import subprocess
import sys

import pytest

from runtime.engine.config import EngineConfig
from runtime.engine.factory import load_tokenizer
from runtime.engine.llm_engine import LLMEngine
from runtime.replica import serving
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


def test_the_local_ray_instance_a_frontend_started_ends_with_it(embedded_model_dir):
    """`heavy up` starts its own Ray: its node's processes must not outlive the frontend's shutdown."""
    program = (
        "import sys, ray\n"
        "from runtime.engine.config import EngineConfig\n"
        "from runtime.replica.serving import start_frontend\n"
        "front = start_frontend(sys.argv[1], 1, 1, EngineConfig(max_model_len=256, num_blocks=16))\n"
        "node = ray._private.worker.global_worker.node\n"
        "pids = [p.process.pid for procs in node.all_processes.values() for p in procs]\n"
        "front.shutdown()\n"
        "print(ray.is_initialized(), ' '.join(map(str, pids)))\n"
    )
    result = subprocess.run([sys.executable, "-c", program, str(embedded_model_dir)], capture_output=True, text=True,
                            timeout=300)
    initialized, *pids = result.stdout.split() or ["no output"]
    assert initialized == "False" and pids, result.stdout + result.stderr[-3000:]
    alive = [pid for pid in pids if subprocess.run(["kill", "-0", pid], capture_output=True).returncode == 0]
    assert alive == []


def test_a_model_type_no_rank_can_load_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """As a dense model over EP > 1 is: the ranks would otherwise fail one by one inside the Ray actors."""
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')

    def no_ray() -> bool:
        raise AssertionError("Ray was started for a checkpoint no rank can load")
    monkeypatch.setattr(serving, "init_ray", no_ray)
    with pytest.raises(UnsupportedReplicaModel, match="llama"):
        start_frontend(tmp_path, replicas=1, ep=1)
