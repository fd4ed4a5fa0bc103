"""One rank of an expert-parallel replica: the non-expert weights, its 1/EP of the routed experts, and an engine
(scheduler, paged KV cache, sampler) that the replica drives in lock-step with the other ranks. A dense checkpoint
(Qwen2: no experts to split) is one rank holding the whole model (EP = 1).

Every rank receives the same requests in the same order and runs the same steps, so all ranks schedule the same
tokens and meet in the same collectives; only the MoE layers differ (each computes its own experts' share).
Plain class: the replica runs it as a Ray actor; nothing here imports Ray.
"""

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runtime.distributed import GroupSpec, destroy_group, expert_slice, init_group, resident_expert_bytes
from runtime.distributed.moe_parallel import shard_moe_layers
from runtime.dtypes import AUTO, DTYPE_CHOICES
from runtime.engine.block_manager import PrefixCacheStats
from runtime.engine.config import EngineConfig
from runtime.engine.factory import load_tokenizer
from runtime.engine.llm_engine import EngineLoad, LLMEngine, RequestError, RequestOutput
from runtime.models.deepseek_v3 import DeepseekV3ForCausalLM
from runtime.models.deepseek_v3_config import DeepseekV3Config
from runtime.models.registry import checkpoint_dtype, load_model
from runtime.sampling import SamplingParams
from runtime.structured import StructuredOutputError

EP_MODEL_TYPES = ("kimi_k2", "deepseek_v3")  # MoE checkpoints whose routed experts ranks split between them


class RankNotConnectedError(RuntimeError):
    """The rank was asked to run before it joined its replica's group."""


def is_moe_checkpoint(path: str | Path) -> bool:
    return json.loads((Path(path) / "config.json").read_text()).get("model_type") in EP_MODEL_TYPES


def routed_experts(path: str | Path) -> int:
    """How many routed experts an MoE checkpoint's layers hold (what its ranks split)."""
    return DeepseekV3Config.from_pretrained(path).n_routed_experts


@dataclass(frozen=True)
class RankSpec:
    model_path: str
    ep_size: int
    rank: int
    dtype: str = AUTO  # resolved on the rank's own node: it may have other hardware than the caller's
    absorbed_mla: bool = True
    engine: EngineConfig = field(default_factory=EngineConfig)
    num_threads: int = 1  # torch threads per rank: ranks share the machine's cores

    def __post_init__(self):
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
        if not 0 <= self.rank < self.ep_size:
            raise ValueError(f"rank {self.rank} outside [0, ep_size={self.ep_size})")
        if self.num_threads <= 0:
            raise ValueError(f"num_threads must be > 0, got {self.num_threads}")


@dataclass(frozen=True)
class RankInfo:
    rank: int
    pid: int
    experts: tuple[int, int]  # [first, last + 1) of the routed experts this rank owns
    expert_bytes: int  # resident routed-expert bytes
    checkpoint_bytes_read: int


@dataclass(frozen=True)
class RankStatus:
    """What the replica's health check reads off a rank (every rank of a group holds the same requests)."""

    prefix_cache: PrefixCacheStats
    load: EngineLoad


class EPRank:
    def __init__(self, spec: RankSpec):
        torch.set_num_threads(spec.num_threads)
        self.spec = spec
        config_path = Path(spec.model_path)
        dtype = checkpoint_dtype(config_path, spec.dtype)  # "auto": on this rank's node
        if is_moe_checkpoint(config_path):
            experts = expert_slice(routed_experts(config_path), spec.ep_size, spec.rank)
            self.model, report = DeepseekV3ForCausalLM.from_pretrained(
                config_path, dtype, absorbed_mla=spec.absorbed_mla, local_experts=experts
            )
            shard_moe_layers(self.model)
            self.info = RankInfo(spec.rank, os.getpid(), (experts.start, experts.stop),
                                 resident_expert_bytes(self.model), report.bytes_read)
        else:
            if spec.ep_size != 1:
                raise ValueError(f"{config_path}: a dense checkpoint has no experts to split; ep_size must be 1, "
                                 f"got {spec.ep_size}")
            self.model = load_model(config_path, dtype)
            weight_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            self.info = RankInfo(spec.rank, os.getpid(), (0, 0), 0, weight_bytes)
        self.tokenizer = load_tokenizer(config_path)
        self.engine: LLMEngine | None = None

    def ping(self) -> RankInfo:
        return self.info

    def free_port(self, host: str) -> int:
        """A free TCP port on this rank's host, for the group's rendezvous (asked of rank 0)."""
        with socket.socket() as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]

    def connect(self, master_addr: str, master_port: int) -> None:
        """Join a fresh group and start from an empty engine (after a peer died, the old state is void)."""
        self.engine = None
        init_group(GroupSpec(self.spec.ep_size, self.spec.rank, master_port, master_addr))
        self.engine = LLMEngine(self.model, self.tokenizer, self.spec.engine)

    def disconnect(self) -> None:
        self.engine = None
        destroy_group()

    def _engine(self) -> LLMEngine:
        if self.engine is None:
            raise RankNotConnectedError(f"rank {self.spec.rank} has not joined its group")
        return self.engine

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str) -> None:
        self._engine().add_request(prompt_token_ids, params, request_id)

    def compile_structured(self, params: SamplingParams) -> None:
        """Compile `params`' structured-output spec into the engine's grammar cache, so that `add_request` finds it
        compiled. The replica calls it on a thread of its own (COMPILE_GROUP) while the steps go on: compiled inside
        `add_request`, it held every request of the batch for the compile's length (seconds for a regex over a 151k
        vocabulary). RequestError for a spec that does not compile, as `add_request`'s."""
        try:
            self._engine().check_structured(params)
        except StructuredOutputError as exc:
            raise RequestError(str(exc)) from None

    def abort(self, request_id: str) -> None:
        self._engine().abort(request_id)

    def step(self) -> list[RequestOutput]:
        return self._engine().step()

    def max_model_len(self) -> int:
        return self._engine().max_model_len

    def status(self) -> RankStatus:
        engine = self._engine()
        return RankStatus(engine.stats, engine.load())

    @torch.inference_mode()
    def logits(self, input_ids: list[int]) -> torch.Tensor:
        """Logits of one sequence without the engine (plain causal attention): [T, V] fp32. Collective."""
        self._engine()  # the group must exist, else the MoE sums would silently miss the other ranks' experts
        ids = torch.tensor(input_ids)  # [T]
        hidden = self.model(ids, torch.arange(len(input_ids)))  # [T, D]
        return self.model.compute_logits(hidden)  # [T, V]
