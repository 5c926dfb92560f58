"""Whether to split sequences across CTAs (context parallelism), and how long the segments are.

The fused forward runs one CTA per (sequence, value head, value block), serial over chunks. When
those CTAs cannot fill the GPU, long sequences are split into segments that run in parallel and are
chained afterwards (gdnc.reference.segments has the math). The default heuristic below is a
starting point; SplitConfig exposes its knobs so the autotuner can choose per shape.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """segment_len: tokens per segment (a multiple of the chunk), 0 = never split, None = heuristic.
    min_waves: CTAs wanted per SM before splitting is not worth it.
    min_segment_chunks: shorter segments cost more in summaries and chaining than they save.
    tau: log-space decay threshold of the gate-driven shortcut (used only where its conditions hold)."""

    segment_len: int | None = None
    min_waves: float = 1.0
    min_segment_chunks: int = 8
    tau: float = -10.0


def plan_segment_len(seqlens: list[int], h_v: int, v_blocks: int, sm_count: int, chunk: int = 64,
                     config: SplitConfig = SplitConfig()) -> int:
    """Segment length in tokens for a call with packed offsets ``seqlens`` (0: do not split)."""
    if config.segment_len is not None:
        if config.segment_len and config.segment_len % chunk:
            raise ValueError(f"SplitConfig.segment_len must be a multiple of the chunk ({chunk}), "
                             f"got {config.segment_len}")
        return config.segment_len
    lengths = [b - a for a, b in zip(seqlens[:-1], seqlens[1:])]
    ctas_per_segment = h_v * v_blocks
    wanted = math.ceil(config.min_waves * sm_count)
    if len(lengths) * ctas_per_segment >= wanted:
        return 0
    segments = math.ceil(wanted / ctas_per_segment)
    segment_len = math.ceil(sum(lengths) / segments / chunk) * chunk
    segment_len = max(segment_len, config.min_segment_chunks * chunk)
    return 0 if segment_len >= max(lengths) else segment_len


def plan_block_v(num_sequences: int, h_v: int, sm_count: int, choices: tuple[int, ...] = (64, 32),
                 v_dim: int = 128) -> int:
    """V columns per CTA of the fused forward: the widest block whose (sequence, head, block) CTAs
    still fill every SM; the narrowest when none does. Narrow blocks shorten each chunk's serial
    work but repeat the state-free work (Q Kᵀ, X̃, M) once per block."""
    for block_v in choices:
        if num_sequences * h_v * (v_dim // block_v) >= sm_count:
            return block_v
    return choices[-1]
