"""How one forward call is laid out on the GPU: the V block per CTA, and whether long sequences are
split into segments that run in parallel (context parallelism, gdnc.cp).

The fused forward runs one CTA per (range of tokens, value head, value block), serial over the
range's chunks, one CTA per SM. When the (sequence, head, block) CTAs cannot fill the GPU, every
sequence is cut into slots of ``segment_len`` tokens that run side by side and are chained by
gdnc.cp. The decision uses only what the host knows without reading the device (token count,
number of sequences, heads, SMs), so a call can be captured in a CUDA graph. The default
heuristic below is a starting point; SplitConfig exposes its knobs so the autotuner can choose per
shape.
"""
from __future__ import annotations

import dataclasses
import math

from gdnc.emit.config import DEFAULT_REGISTERS

MAX_WARMUP_CHUNKS = 32  # cp_plan keeps whether each window is usable as a bit of one 32-bit word


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """segment_len: tokens per segment (a multiple of the chunk); 0 = never split, None = heuristic.
    min_segment_chunks: shorter segments cost more in warm-ups, chaining and launches than they save.
    min_tokens: calls with fewer tokens are not split. Measured when the split path cost ≈ 0.15 ms
         of small launches; since cp_plan and cp_chain it costs ≈ 20 µs, so a lower threshold
         likely pays (not yet measured: benchmarks/NOTES.md, 2026-12-03).
    max_sequences: calls with more sequences are not split: every sequence gets slots for all the
         tokens (the lengths are not read), and the CTAs of the empty ones cost more than a
         balanced batch gains.
    tau: log-space decay threshold of the gate-driven shortcut (gdnc.cp): a segment's start state is
         warmed up over the fewest whole chunks before it whose decay is at most tau in every head,
         used only where the transitions are provably non-expansive.
    max_warmup_chunks: the longest warm-up tried before the exact chain is used instead."""

    segment_len: int | None = None
    min_segment_chunks: int = 8
    min_tokens: int = 8192
    max_sequences: int = 2
    tau: float = -10.0
    max_warmup_chunks: int = 16

    def check(self, chunk: int = 64) -> None:
        if self.segment_len is not None and (self.segment_len < 0 or self.segment_len % chunk):
            raise ValueError(f"SplitConfig.segment_len must be 0, None or a positive multiple of the chunk "
                             f"({chunk}), got {self.segment_len}")
        if self.min_segment_chunks < 1 or self.max_warmup_chunks < 1:
            raise ValueError(f"SplitConfig.min_segment_chunks and max_warmup_chunks must be >= 1, got "
                             f"{self.min_segment_chunks}, {self.max_warmup_chunks}")
        if self.max_warmup_chunks > MAX_WARMUP_CHUNKS:
            raise ValueError(f"SplitConfig.max_warmup_chunks must be at most {MAX_WARMUP_CHUNKS} (the planner "
                             f"kernel's window mask), got {self.max_warmup_chunks}")
        if not self.tau < 0:
            raise ValueError(f"SplitConfig.tau must be negative (a log-space decay), got {self.tau}")


@dataclasses.dataclass(frozen=True)
class ForwardPlan:
    """block_v: V columns per CTA. segment_len: tokens per segment, 0 when not split.
    slots: segment slots per sequence (ceil(tokens / segment_len): enough for the longest possible
    sequence; slots past a sequence's end are empty ranges whose CTAs exit at once)."""

    block_v: int
    segment_len: int = 0
    slots: int = 1

    @property
    def split(self) -> bool:
        return self.segment_len > 0


def plan_forward(tokens: int, num_sequences: int, h_v: int, sm_count: int, v_dim: int = 128, chunk: int = 64,
                 config: SplitConfig = SplitConfig()) -> ForwardPlan:
    """The plan of a call with ``tokens`` packed tokens in ``num_sequences`` sequences.

    The lengths of the sequences are not used (reading cu_seqlens would sync the host), so the
    plan holds for any lengths: slots are sized for one sequence holding every token. Split when
    one wave holds at least two segments' CTAs at the widest block, for calls of at least
    min_tokens tokens in at most max_sequences sequences (one long sequence, or a long and a short
    one, as the design notes' shapes have): as many segments as one wave holds, never shorter
    than min_segment_chunks. Unsplit, the narrow block is used only where its CTAs still fit one
    wave: a second wave costs a whole serial pass. (Measured on the H200 for these defaults:
    benchmarks/results/2026-12-02-h200-cp-v1/sweep.log.)"""
    config.check(chunk)
    wide, narrow = max(DEFAULT_REGISTERS), min(DEFAULT_REGISTERS)  # the block widths the forward has budgets for
    per_sequence = h_v * (v_dim // wide)
    if config.segment_len:
        return ForwardPlan(wide, config.segment_len, math.ceil(tokens / config.segment_len))
    segments = sm_count // per_sequence
    if config.segment_len is None and segments >= 2 and tokens >= config.min_tokens \
            and num_sequences <= config.max_sequences:
        segment_len = max(config.min_segment_chunks, math.ceil(tokens / segments / chunk)) * chunk
        if segment_len < tokens:
            return ForwardPlan(wide, segment_len, math.ceil(tokens / segment_len))
    if num_sequences * per_sequence < sm_count and num_sequences * h_v * (v_dim // narrow) <= sm_count:
        return ForwardPlan(narrow)
    return ForwardPlan(wide)
