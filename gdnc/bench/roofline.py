"""The floor under every kernel: FLOPs and HBM bytes of one forward call (gdn-math.md §7).

floor = max(FLOPs / bf16 GEMM rate, bytes / copy bandwidth), both rates measured in the same run.
No implementation can beat it; time / floor is the room left.
"""

from __future__ import annotations

from gdnc.ir.program import CHUNK_SIZE

from .shapes import Shape

# Tensor-core multiply-adds per chunk of 64 tokens and value head, fused formulation, K = V = 128
# (gdn-math.md §7: KKᵀ, QKᵀ, KŜ, AgW, QŜ, PgV', KᵀV' and the inverse), ≈ 180 kFLOP per token.
MACS_PER_CHUNK_HEAD = 5.8e6

BF16, FP32 = 2, 4


def flops(shape: Shape) -> float:
    """Tensor-core FLOPs; each sequence pays for its padded last chunk."""
    if shape.head_dim != 128:
        raise ValueError(f"the §7 cost model is for K = V = 128, got {shape.head_dim}")
    return 2.0 * MACS_PER_CHUNK_HEAD * shape.h_v * shape.chunks(CHUNK_SIZE)


def hbm_bytes(shape: Shape) -> float:
    """Each input read once, each output written once.

    Per token: q, k per q/k head and v, o per value head in bf16; g, beta per value head in fp32.
    Per sequence: initial_state read and final_state written, [h_v, K, V] fp32 each. (anchors.md's
    floors count the tokens only; the state adds up to ~15% for batches of short sequences.)
    """
    K = V = shape.head_dim
    per_token = 2 * shape.h_qk * K * BF16 + 2 * shape.h_v * V * BF16 + 2 * shape.h_v * FP32
    per_seq = 2 * shape.h_v * K * V * FP32
    return float(shape.tokens * per_token + shape.n_seqs * per_seq)


def floor(shape: Shape, gemm_flops_per_s: float, copy_bytes_per_s: float) -> dict:
    """Floor in ms, and which term sets it ('compute' or 'memory')."""
    if gemm_flops_per_s <= 0 or copy_bytes_per_s <= 0:
        raise ValueError("the measured rates must be positive")
    compute_ms = flops(shape) / gemm_flops_per_s * 1e3
    memory_ms = hbm_bytes(shape) / copy_bytes_per_s * 1e3
    return {
        "flops": flops(shape),
        "bytes": hbm_bytes(shape),
        "compute_ms": compute_ms,
        "memory_ms": memory_ms,
        "floor_ms": max(compute_ms, memory_ms),
        "bound": "compute" if compute_ms >= memory_ms else "memory",
    }


def achieved(roof: dict, ms: float) -> dict:
    """Rates a measured time implies for the counted FLOPs and bytes."""
    seconds = ms * 1e-3
    return {"tflops": roof["flops"] / seconds / 1e12, "gbps": roof["bytes"] / seconds / 1e9}
