"""A weight-only INT4 linear layer (W4A16) holding the compressed-tensors `pack-quantized` tensors as they are
stored in the checkpoint, so the loader fills them by name and the weights stay packed in memory; and which linears
a checkpoint's compressed-tensors `quantization_config` makes INT4.

Shapes: T = tokens, K = in features, N = out features, G = group size.
  weight_packed int32 [N, K/8], weight_scale [N, K/G] (bf16 in the checkpoint), weight_shape int64 [2] = (N, K),
  bias [N] (optional, unquantized).
"""

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernels import Int4Weight, int4_linear, prepare_int4
from kernels.pack import DEFAULT_GROUP_SIZE, PACK_FACTOR
from runtime.layers.batch_invariant import in_fixed_tiles

QUANT_METHOD, QUANT_FORMAT, QUANT_STATUS = "compressed-tensors", "pack-quantized", "compressed"
# weights arguments of a config group -> the only value we can run; the optional ones default to it when absent
REQUIRED_WEIGHT_ARGS = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group"}
OPTIONAL_WEIGHT_ARGS = {"dynamic": False, "actorder": None}
LINEAR_CLASS_TARGET = "Linear"  # compressed-tensors matches targets against module class names too
REGEX_PREFIX = "re:"  # compressed-tensors: "re:<pattern>" is re.match-ed against the module name


class QuantizationConfigError(ValueError):
    """config.json's quantization_config asks for something this runtime cannot run; the message names the field."""


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int = DEFAULT_GROUP_SIZE,
                 scale_dtype: torch.dtype = torch.bfloat16, bias: bool = False):
        super().__init__()
        if in_features % group_size or group_size % PACK_FACTOR:
            raise ValueError(f"in_features={in_features} must be a multiple of group_size={group_size}, "
                             f"itself a multiple of {PACK_FACTOR}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // PACK_FACTOR, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.zeros(out_features, in_features // group_size, dtype=scale_dtype))
        self.register_buffer("weight_shape", torch.tensor([out_features, in_features], dtype=torch.int64))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=scale_dtype)) if bias else None
        # rows per call in the batch-invariant mode (runtime/layers/batch_invariant.py), None: all rows in one call.
        # FP32 past 128 rows (or without the AVX2 kernel) dequantizes and multiplies as F.linear does, whose result
        # depends on the number of rows
        self.tile: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, K] -> [T, N] on the kernels' W4A16 dispatch (Triton on CUDA, the native kernel on CPU).
        weight = self._prepared()
        if self.tile is None:
            return int4_linear(x.contiguous(), weight, self.bias)
        return in_fixed_tiles(x, lambda rows: int4_linear(rows, weight, self.bias), self.out_features, self.tile)

    def _prepared(self) -> Int4Weight:
        # Repacked once for the device's kernel; again only if loading or .to() replaced or rewrote the buffers
        # (tensors made under inference_mode have no version counter: their address is the key).
        buffers = (self.weight_packed, self.weight_scale)
        key = tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in buffers)
        if getattr(self, "_prepared_key", None) != key:
            self._prepared_weight = prepare_int4(self.weight_packed, self.weight_scale, self.group_size)
            self._prepared_key = key
        return self._prepared_weight

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"bias={self.bias is not None}")


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith(REGEX_PREFIX):
        return re.match(pattern.removeprefix(REGEX_PREFIX), name) is not None
    return pattern in (name, LINEAR_CLASS_TARGET)


@dataclass(frozen=True)
class Int4Group:
    """One compressed-tensors config group: the linears it targets and their group size."""

    name: str
    targets: tuple[str, ...]
    group_size: int


@dataclass(frozen=True)
class Int4Quantization:
    """A compressed-tensors `pack-quantized` quantization_config with INT4 symmetric per-group weights only."""

    groups: tuple[Int4Group, ...]
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        for group in self.groups:
            if group.group_size <= 0 or group.group_size % PACK_FACTOR:
                raise QuantizationConfigError(
                    f"quantization_config.config_groups.{group.name}.weights.group_size={group.group_size} must be "
                    f"a positive multiple of {PACK_FACTOR}")

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Int4Quantization":
        def expect(field: str, actual: Any, wanted: Any) -> None:
            if actual != wanted:
                raise QuantizationConfigError(
                    f"quantization_config.{field} is {actual!r}; only {wanted!r} is supported")

        if not isinstance(raw, dict):
            raise QuantizationConfigError(f"quantization_config must be an object, got {type(raw).__name__}")
        expect("quant_method", raw.get("quant_method"), QUANT_METHOD)
        expect("format", raw.get("format"), QUANT_FORMAT)
        expect("quantization_status", raw.get("quantization_status", QUANT_STATUS), QUANT_STATUS)
        for field in ("kv_cache_scheme", "sparsity_config", "transform_config"):
            expect(field, raw.get(field), None)
        raw_groups = raw.get("config_groups")
        if not isinstance(raw_groups, dict) or not raw_groups:
            raise QuantizationConfigError(f"quantization_config.config_groups must name at least one group, "
                                          f"got {raw_groups!r}")
        groups = []
        for name, group in raw_groups.items():
            where = f"config_groups.{name}"
            weights = group.get("weights") or {}
            for field, wanted in REQUIRED_WEIGHT_ARGS.items():
                expect(f"{where}.weights.{field}", weights.get(field), wanted)
            for field, wanted in OPTIONAL_WEIGHT_ARGS.items():
                expect(f"{where}.weights.{field}", weights.get(field, wanted), wanted)
            expect(f"{where}.format", group.get("format", QUANT_FORMAT), QUANT_FORMAT)
            for field in ("input_activations", "output_activations"):
                expect(f"{where}.{field}", group.get(field), None)
            targets = group.get("targets")
            if not targets or not isinstance(targets, list):
                raise QuantizationConfigError(f"quantization_config.{where}.targets must be a non-empty list, "
                                              f"got {targets!r}")
            group_size = weights.get("group_size")
            if not isinstance(group_size, int):
                raise QuantizationConfigError(f"quantization_config.{where}.weights.group_size must be an integer, "
                                              f"got {group_size!r}")
            groups.append(Int4Group(name, tuple(targets), group_size))
        return cls(tuple(groups), tuple(raw.get("ignore") or ()))

    def group_size_for(self, linear_name: str) -> int | None:
        """The group size of the linear layer named `linear_name`, or None when it stays unquantized."""
        if any(_matches(linear_name, pattern) for pattern in self.ignore):
            return None
        for group in self.groups:
            if any(_matches(linear_name, target) for target in group.targets):
                return group.group_size
        return None


def build_int4_linears(model: nn.Module, quantization: Int4Quantization) -> list[str]:
    """Give `model` (just constructed, before loading) an empty Int4Linear in place of every nn.Linear the
    quantization_config targets, same shape and bias; returns their names."""
    built = []
    for name, module in list(model.named_modules()):
        group_size = quantization.group_size_for(name) if isinstance(module, nn.Linear) else None
        if group_size is None:
            continue
        if module.in_features % group_size:
            raise QuantizationConfigError(
                f"quantization_config targets {name!r}, whose in_features={module.in_features} is not a multiple "
                f"of its group_size={group_size}")
        parent_name, _, child = name.rpartition(".")
        int4 = Int4Linear(module.in_features, module.out_features, group_size, bias=module.bias is not None)
        setattr(model.get_submodule(parent_name), child, int4)
        built.append(name)
    if not built:
        raise QuantizationConfigError("quantization_config.config_groups targets none of the model's linear layers "
                                      "(after quantization_config.ignore)")
    return built
