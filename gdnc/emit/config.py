"""Typed configurations of the kernel templates: the head shapes a kernel is built for, and the
tunables of each template (also the autotuner's search space)."""
from __future__ import annotations

import dataclasses

DTYPES = {"bfloat16": "bf16", "float16": "fp16"}


@dataclasses.dataclass(frozen=True)
class Heads:
    """What a compiled kernel is specialised to: q/k heads, value heads, key and value dims, dtype."""

    h_qk: int
    h_v: int
    k_dim: int = 128
    v_dim: int = 128
    dtype: str = "bfloat16"

    def __post_init__(self):
        for name in ("h_qk", "h_v", "k_dim", "v_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Heads.{name} must be a positive int, got {value!r}")
        if self.h_v % self.h_qk:
            raise ValueError(f"Heads: h_v={self.h_v} must be a multiple of h_qk={self.h_qk} (GVA)")
        if self.dtype not in DTYPES:
            raise ValueError(f"Heads.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    @property
    def group(self) -> int:
        return self.h_v // self.h_qk


@dataclasses.dataclass(frozen=True)
class InverseConfig:
    """The gate-free inverse A = (I + StrictLower(diag(β) K Kᵀ))⁻¹ per chunk and value head.

    threads: CUDA threads per CTA (K Kᵀ on one warpgroup's wgmma; the substitution on C lanes).
    """

    chunk: int = 64
    threads: int = 128

    def check(self, heads: Heads) -> None:
        if self.chunk != 64:
            raise ValueError(f"InverseConfig.chunk must be 64 (the wgmma tile), got {self.chunk}")
        if self.threads not in (128, 256):
            raise ValueError(f"InverseConfig.threads must be 128 or 256, got {self.threads}")
        if heads.k_dim % 64:
            raise ValueError(f"the inverse kernel needs K a multiple of 64, got K={heads.k_dim}")


@dataclasses.dataclass(frozen=True)
class ForwardConfig:
    """The fused forward kernel: one CTA per (value block, value head, sequence), serial over chunks.

    block_v:    V columns per CTA (V is split across CTAs when there are few (sequence, head) pairs)
    threads:    consumer threads per CTA (TileLang adds a TMA producer warpgroup when it warp-
                specialises the pipelined loads)
    num_stages: shared-memory buffers for the pipelined loads of q, k, v and A
    """

    chunk: int = 64
    block_v: int = 64
    threads: int = 256
    num_stages: int = 2
    fast_math: bool = True

    def check(self, heads: Heads) -> None:
        if self.chunk != 64:
            raise ValueError(f"ForwardConfig.chunk must be 64, got {self.chunk}")
        if self.block_v not in (32, 64, 128) or heads.v_dim % self.block_v:
            raise ValueError(f"ForwardConfig.block_v must be 32, 64 or 128 and divide V={heads.v_dim}, "
                             f"got {self.block_v}")
        if self.threads not in (128, 256):
            raise ValueError(f"ForwardConfig.threads must be 128 or 256, got {self.threads}")
        if self.num_stages not in (1, 2, 3):
            raise ValueError(f"ForwardConfig.num_stages must be 1, 2 or 3, got {self.num_stages}")
        if heads.k_dim % 64:
            raise ValueError(f"the forward kernel needs K a multiple of 64, got K={heads.k_dim}")


def describe(config) -> str:
    return ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
