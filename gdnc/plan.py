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

from gdnc.emit.config import FORWARD_WIDTHS

MAX_WARMUP_CHUNKS = 32  # cp_plan keeps whether each window is usable as a bit of one 32-bit word


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """segment_len: tokens per segment (a multiple of the chunk); 0 = never split, None = heuristic.
    min_segment_chunks: shorter segments cost more in warm-ups, chaining and launches than they save.
    min_tokens: calls with fewer tokens are not split.
    max_sequences: calls with up to this many sequences are split as if one sequence held all the
         tokens (one of them may), into the segment count that minimises the modelled time below;
         calls with more only where the unsplit call leaves half the GPU idle (a batch is taken to
         be balanced) and the sequences are long. Every sequence gets slots for all the tokens (the
         lengths are not read), so the slots, mostly empty, grow with the square of the sequence count.
    min_batch_sequence_tokens: such a batch is split only if it has this many tokens per sequence
         (shorter ones lose more to the split's fixed cost and empty slots than they gain).
    tau: log-space decay threshold of the gate-driven shortcut (gdnc.cp): a segment's start state is
         warmed up over the fewest whole chunks before it whose decay is at most tau in every head,
         used only where the transitions are provably non-expansive.
    max_warmup_chunks: the longest warm-up tried before the exact chain is used instead.
    wave_overhead_chunks: what one wave of segment CTAs (one CTA an SM) costs besides its chunks, in
         chunk steps: loading and storing states, filling the pipeline, the warm-up pass. The segment
         count n of a call of c chunks minimises ceil(n · CTAs a segment / SMs) · (ceil(c / n) + this):
         a second wave of shorter segments beats one wave that leaves SMs idle (h_v = 48: 96 of 132)."""

    segment_len: int | None = None
    min_segment_chunks: int = 4
    min_tokens: int = 2048
    max_sequences: int = 2
    min_batch_sequence_tokens: int = 8192
    tau: float = -10.0
    max_warmup_chunks: int = 16
    wave_overhead_chunks: float = 3.0

    def check(self, chunk: int = 64) -> None:
        if self.segment_len is not None and (self.segment_len < 0 or self.segment_len % chunk):
            raise ValueError(f"SplitConfig.segment_len must be 0, None or a positive multiple of the chunk "
                             f"({chunk}), got {self.segment_len}")
        if self.min_segment_chunks < 1 or self.max_warmup_chunks < 1:
            raise ValueError(f"SplitConfig.min_segment_chunks and max_warmup_chunks must be >= 1, got "
                             f"{self.min_segment_chunks}, {self.max_warmup_chunks}")
        if self.min_tokens < 0 or self.min_batch_sequence_tokens < 0 or self.max_sequences < 1:
            raise ValueError(f"SplitConfig.min_tokens and min_batch_sequence_tokens must be >= 0 and max_sequences "
                             f">= 1, got {self.min_tokens}, {self.min_batch_sequence_tokens}, {self.max_sequences}")
        if self.max_warmup_chunks > MAX_WARMUP_CHUNKS:
            raise ValueError(f"SplitConfig.max_warmup_chunks must be at most {MAX_WARMUP_CHUNKS} (the planner "
                             f"kernel's window mask), got {self.max_warmup_chunks}")
        if not self.wave_overhead_chunks >= 0:
            raise ValueError(f"SplitConfig.wave_overhead_chunks must be >= 0, got {self.wave_overhead_chunks}")
        if not self.tau < 0:
            raise ValueError(f"SplitConfig.tau must be negative (a log-space decay), got {self.tau}")


@dataclasses.dataclass(frozen=True)
class ForwardPlan:
    """block_v: V columns per CTA. segment_len: tokens per segment, 0 when not split.
    slots: segment slots per sequence (ceil(tokens / segment_len): enough for the longest possible
    sequence; slots past a sequence's end are empty ranges whose CTAs exit at once).
    prepare_heads_per_cta: value heads one gdn_prepare CTA prepares (PrepareConfig.heads_per_cta)."""

    block_v: int
    segment_len: int = 0
    slots: int = 1
    prepare_heads_per_cta: int = 1

    @property
    def split(self) -> bool:
        return self.segment_len > 0


def plan_forward(tokens: int, num_sequences: int, h_v: int, sm_count: int, v_dim: int = 128, chunk: int = 64,
                 config: SplitConfig = SplitConfig()) -> ForwardPlan:
    """The plan of a call with ``tokens`` packed tokens in ``num_sequences`` sequences.

    The lengths of the sequences are not used (reading cu_seqlens would sync the host), so the
    plan holds for any lengths: slots are sized for one sequence holding every token. Split at
    the widest block, for calls of at least min_tokens tokens: with at most max_sequences
    sequences (one long sequence, or a long and a short one) into segment_count's segments; with
    more, of min_batch_sequence_tokens on average, when one wave holds two segments' CTAs of each,
    into as many as it holds; never shorter than min_segment_chunks. Unsplit: the narrowest block
    whose CTAs fit one wave (a CTA's chain is shorter the fewer columns it carries, and a second
    wave costs a whole serial pass), else the widest (the least repeated C×C work). Measured on
    the H200: benchmarks/results/2026-12-03-h200-wide-forward/sweep.log and
    2026-12-04-h200-prepare-sharing/profile_sweep.log."""
    config.check(chunk)
    widths = sorted(w for w in FORWARD_WIDTHS if v_dim % w == 0)
    if not widths:
        raise ValueError(f"plan_forward: no forward V block {FORWARD_WIDTHS} divides v_dim={v_dim}")
    wide = widths[-1]
    per_sequence = h_v * (v_dim // wide)
    if config.segment_len:
        return ForwardPlan(wide, config.segment_len, math.ceil(tokens / config.segment_len))
    if num_sequences <= config.max_sequences:
        segments = segment_count(math.ceil(tokens / chunk), per_sequence, sm_count, config)
    else:  # a balanced batch of long sequences: split only if each gets two segments or more
        each = sm_count // (num_sequences * per_sequence)
        long = tokens >= num_sequences * config.min_batch_sequence_tokens
        segments = each * num_sequences if each >= 2 and long else 0
    if config.segment_len is None and segments >= 2 and tokens >= config.min_tokens:
        segment_len = max(config.min_segment_chunks, math.ceil(tokens / segments / chunk)) * chunk
        if segment_len < tokens:
            return ForwardPlan(wide, segment_len, math.ceil(tokens / segment_len))
    for width in widths:
        if num_sequences * h_v * (v_dim // width) <= sm_count:
            return ForwardPlan(width)
    return ForwardPlan(wide)


def segment_count(chunks: int, per_segment: int, sm_count: int, config: SplitConfig) -> int:
    """How many segments to cut ``chunks`` chunks of one sequence into, ``per_segment`` CTAs each at one
    CTA an SM: the count n of at least min_segment_chunks chunks a segment that minimises the
    modelled time ceil(n · per_segment / sm_count) · (ceil(chunks / n) + wave_overhead_chunks) (the
    fewest on a tie); 1 where no split is modelled faster than none."""
    def cost(n):
        return math.ceil(n * per_segment / sm_count) * (math.ceil(chunks / n) + config.wave_overhead_chunks)

    most = max(1, chunks // config.min_segment_chunks)
    return min(range(1, most + 1), key=lambda n: (cost(n), n))


def prepare_heads_per_cta(tokens: int, num_sequences: int, h_qk: int, group: int, resident_ctas: int,
                          chunk: int = 64) -> int:
    """gdn_prepare's value heads a CTA: all ``group`` value heads of a k head, which then share one
    load of k and one K Kᵀ, where its CTAs (one per chunk slot and k head) still fill the GPU
    ``resident_ctas`` at a time; else one (h_v CTAs a slot, so more run side by side, each
    shorter). On the H200, 2/8 1×2048 prepares in 6.8 µs one head a CTA and 13.5 µs four; 16/48
    4096+28672 in 365 and 325 µs
    (benchmarks/results/2026-12-04-h200-prepare-sharing/profile_prepare_configs.log)."""
    slots = tokens // chunk + num_sequences
    return group if slots * h_qk >= resident_ctas else 1
