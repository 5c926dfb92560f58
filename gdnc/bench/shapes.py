"""The forward benchmark shapes of anchors.md and the random inputs for one shape.

A shape is a head configuration (h_qk query/key heads, h_v value heads, K = V = 128, the
Qwen3.5/3.6 models) and a token mix (the lengths of the sequences packed into one call).
Nine head configurations times nineteen token mixes give the 171 forward cases the FlashQLA
authors published, so our geometric means compare with theirs.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

HEAD_DIM = 128  # K = V = 128 in every Qwen3.5/3.6 configuration

# (h_qk, h_v): TP8, TP4, TP2 and TP1 slices of the Qwen3.5/3.6 models, and 32/32.
HEAD_CONFIGS = ((2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16), (32, 32))


def _two_way_splits(total: int, step: int = 4096) -> tuple[tuple[int, int], ...]:
    """(total - step, step), ..., (step, total - step): both sequences non-empty."""
    return tuple((first, total - first) for first in range(total - step, 0, -step))


TOKEN_MIXES = (
    (2048,), (4096,), (8192,), (16384,), (32768,),
    *_two_way_splits(32768),
    *_two_way_splits(16384),
    (8192,) * 4, (4096,) * 8, (2048,) * 4, (1024,) * 8,
)

# --quick: a subset that runs in about ten minutes, the peers' first compilation included (each new
# head configuration costs minutes of FlashQLA compilation and FLA autotuning: benchmarks/NOTES.md),
# so quick takes two head configurations: few heads (where intra-card CP wins) and the 35B/9B TP1 slice. Its token mixes
# separate the designs: one short and one long sequence, an uneven split (intra-card CP), and
# batches that already fill the GPU.
QUICK_HEAD_CONFIGS = ((2, 8), (16, 32))
QUICK_TOKEN_MIXES = ((4096,), (32768,), (28672, 4096), (8192,) * 4, (1024,) * 8)

# The backward shapes of anchors.md (gdnc bench --backward): these head configurations × 8K and 32K
# tokens × 1, 2, 4, 8 equal sequences.
BACKWARD_HEAD_CONFIGS = ((16, 32), (8, 16), (4, 8), (2, 4), (16, 48), (16, 64))
BACKWARD_TOKENS = (8192, 32768)
BACKWARD_SEQUENCES = (1, 2, 4, 8)

# The float64 check runs on single sequences of this length: long enough to cross 64 chunks,
# short enough for a float64 reference on the GPU.
FLOAT64_CHECK_TOKENS = 4096


@dataclass(frozen=True)
class Shape:
    """One forward case: heads and the lengths of the sequences packed into one call."""

    h_qk: int
    h_v: int
    seq_lens: tuple[int, ...]
    head_dim: int = HEAD_DIM

    def __post_init__(self):
        if self.h_qk <= 0 or self.h_v % self.h_qk:
            raise ValueError(f"h_v must be a positive multiple of h_qk, got {self.h_qk}/{self.h_v}")
        if not self.seq_lens or min(self.seq_lens) <= 0:
            raise ValueError(f"seq_lens must be non-empty and positive, got {self.seq_lens}")

    @property
    def tokens(self) -> int:
        return sum(self.seq_lens)

    @property
    def n_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def mix(self) -> str:
        """'1x4096', '4x8192' for equal lengths, '28672+4096' otherwise."""
        if len(set(self.seq_lens)) == 1:
            return f"{self.n_seqs}x{self.seq_lens[0]}"
        return "+".join(str(n) for n in self.seq_lens)

    @property
    def name(self) -> str:
        """Stable id used by --shapes, the JSON and the plot, e.g. 'h16-32_4x8192'."""
        return f"h{self.h_qk}-{self.h_v}_{self.mix}"

    @property
    def float64_check(self) -> bool:
        return self.n_seqs == 1 and self.tokens == FLOAT64_CHECK_TOKENS

    def chunks(self, chunk_size: int = 64) -> int:
        """Chunks over all sequences; each sequence pads its last chunk."""
        return sum(math.ceil(n / chunk_size) for n in self.seq_lens)


def forward_shapes(quick: bool = False) -> list[Shape]:
    """The forward table, grouped by head configuration so each peer compiles once per group."""
    heads = QUICK_HEAD_CONFIGS if quick else HEAD_CONFIGS
    mixes = QUICK_TOKEN_MIXES if quick else TOKEN_MIXES
    return [Shape(h_qk, h_v, mix) for h_qk, h_v in heads for mix in mixes]


def backward_shapes() -> list[Shape]:
    """The backward table (48 shapes), grouped by head configuration."""
    return [Shape(h_qk, h_v, (tokens // n,) * n) for h_qk, h_v in BACKWARD_HEAD_CONFIGS
            for tokens in BACKWARD_TOKENS for n in BACKWARD_SEQUENCES]


def select(shapes: list[Shape], patterns: str | None) -> list[Shape]:
    """Keep the shapes whose name matches one of the comma-separated glob patterns."""
    if not patterns:
        return shapes
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [s for s in shapes if any(fnmatch.fnmatchcase(s.name, g) for g in globs)]
    if not chosen:
        names = ", ".join(s.name for s in shapes[:4])
        raise ValueError(f"--shapes {patterns!r} matches no shape (names look like {names}, ...)")
    return chosen


def make_inputs(shape: Shape, generator, device="cuda", cu_seqlens=None) -> dict:
    """Fresh random inputs in FLA's layout, as anchors.md prescribes.

    Returns keyword arguments of the providers' signature:
      q, k: [1, T, h_qk, K] bf16, L2-normalised over K
      v: [1, T, h_v, V] bf16
      g: [1, T, h_v] fp32, log-space decay logsigmoid(randn)
      beta: [1, T, h_v] fp32, sigmoid(rand)
      initial_state: [N, h_v, K, V] fp32
      cu_seqlens: [N + 1] int32, or None for a single sequence (dense [1, T] call)
      scale: None (K^-0.5), output_final_state: True
    Several sequences are packed into one varlen row (B = 1) so every peer sees the same call.
    Pass `cu_seqlens` to reuse one tensor across input sets: the peers cache per-call plans by
    the identity of that tensor, and a cache miss during CUDA-graph capture would sync the host.
    """
    import torch
    import torch.nn.functional as F

    T, K = shape.tokens, shape.head_dim

    def randn(*size):
        return torch.randn(*size, generator=generator, device=device, dtype=torch.float32)

    q = F.normalize(randn(1, T, shape.h_qk, K), dim=-1).to(torch.bfloat16)
    k = F.normalize(randn(1, T, shape.h_qk, K), dim=-1).to(torch.bfloat16)
    v = randn(1, T, shape.h_v, K).to(torch.bfloat16)
    g = F.logsigmoid(randn(1, T, shape.h_v))
    beta = torch.rand(1, T, shape.h_v, generator=generator, device=device).sigmoid()
    initial_state = randn(shape.n_seqs, shape.h_v, K, K)
    if cu_seqlens is None and shape.n_seqs > 1:
        bounds = [0]
        for n in shape.seq_lens:
            bounds.append(bounds[-1] + n)
        cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=device)
    return {"q": q, "k": k, "v": v, "g": g, "beta": beta, "scale": None,
            "initial_state": initial_state, "output_final_state": True, "cu_seqlens": cu_seqlens}
