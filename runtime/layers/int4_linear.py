"""A weight-only INT4 linear layer (W4A16) holding the compressed-tensors `pack-quantized` tensors as they are
stored in the checkpoint, so the loader fills them by name and the weights stay packed in memory.

Shapes: T = tokens, K = in features, N = out features, G = group size.
  weight_packed int32 [N, K/8], weight_scale [N, K/G] (bf16 in the checkpoint), weight_shape int64 [2] = (N, K).
"""

import torch
from torch import nn

from kernels import Int4Weight, int4_linear, prepare_int4
from kernels.pack import DEFAULT_GROUP_SIZE, PACK_FACTOR


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int = DEFAULT_GROUP_SIZE,
                 scale_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if in_features % group_size or group_size % PACK_FACTOR:
            raise ValueError(f"in_features={in_features} must be a multiple of group_size={group_size}, "
                             f"itself a multiple of {PACK_FACTOR}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // PACK_FACTOR, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.zeros(out_features, in_features // group_size, dtype=scale_dtype))
        self.register_buffer("weight_shape", torch.tensor([out_features, in_features], dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, K] -> [T, N] on the kernels' W4A16 dispatch (Triton on CUDA, the native kernel on CPU).
        return int4_linear(x.contiguous(), self._prepared())

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
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"
