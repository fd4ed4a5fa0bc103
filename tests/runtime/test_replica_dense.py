"""A dense checkpoint (the embedded Qwen2.5-Coder-0.5B) on a Ray replica of one rank behind the router: the same
greedy tokens as an engine in this process over the same folder (FP32), EP > 1 refused (no experts to split), and a
structured-output compile that does not hold up the rank's batch."""

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray import cloudpickle

from runtime.engine.config import EngineConfig
from runtime.engine.factory import load_tokenizer
from runtime.engine.llm_engine import LLMEngine
from runtime.replica import serving
from runtime.replica.serving import UnsupportedReplicaModel, start_frontend
from runtime.sampling import SamplingParams, StructuredOutput

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


HOLD_BOUND_S = 120.0  # a deadlock guard, never reached when the code is right: nothing here asserts on time


class HeldCompile(tuple):
    """A structured spec's (empty) special tokens whose first reading in another process, the rank's compile
    (Grammars._get_compiler), writes `started` in `folder` and waits there until the test writes `released`."""

    def __new__(cls, folder: str):
        held = super().__new__(cls)
        held.folder = folder
        return held

    def __reduce__(self):  # pickled without reading itself
        return HeldCompile, (self.folder,)

    def __iter__(self):
        folder = Path(self.folder)
        (folder / "started").touch()
        deadline = time.monotonic() + HOLD_BOUND_S
        while not (folder / "released").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return iter(())


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + HOLD_BOUND_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_batch_mate_keeps_decoding_while_a_structured_spec_compiles_on_the_replica(frontend,
                                                                                          embedded_model_dir,
                                                                                          tmp_path):
    """The rank compiled a structured request's spec in add_request, on the thread that runs its steps: every
    request of its batch waited for the compile (seconds for a regex over the 151k vocabulary)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # HeldCompile reaches the rank by value
    prompt = load_tokenizer(embedded_model_dir).encode_chat(PROMPT)
    mate_outputs = []

    async def decode_mate():
        mate = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        async for output in frontend.generate(prompt, mate, "batch-mate"):
            mate_outputs.append(output)

    async def held_structured() -> str:
        spec = StructuredOutput("regex", "[0-9]{3}", HeldCompile(str(tmp_path)))
        params = SamplingParams(temperature=0.0, max_tokens=8, structured=spec)
        return "".join([output.new_text async for output in frontend.generate(prompt, params, "held-compile")])

    mate_task = asyncio.ensure_future(decode_mate())
    try:
        await _until(lambda: mate_outputs, "the batch-mate never started")
        structured = asyncio.ensure_future(held_structured())
        await _until((tmp_path / "started").exists, "the compile never started")
        # one step's output may still be on its way when the compile starts; five are steps run beside it
        compiling_from = len(mate_outputs)
        await _until(lambda: len(mate_outputs) >= compiling_from + 5 or mate_task.done(),
                     "the batch-mate's tokens stopped while the spec compiled")
        assert len(mate_outputs) >= compiling_from + 5, mate_task.result()
        (tmp_path / "released").touch()
        assert re.fullmatch("[0-9]{3}", await structured)
    finally:
        (tmp_path / "released").touch()
        mate_task.cancel()
