"""What one forward call runs: the kernels' configs and whether long sequences are split into
segments that run in parallel (context parallelism, gdnc.runtime.cp), and the hand heuristic that
lays a call out on the GPU (gdnc.runtime.policy chooses with it).

The fused forward runs one CTA per (range of tokens, value head, value block), serial over the
range's chunks, one CTA per SM. When the (sequence, head, block) CTAs cannot fill the GPU, every
sequence is cut into slots of ``segment_len`` tokens that run side by side and are chained by
gdnc.runtime.cp. The decision uses only what the host knows without reading the device (token
count, number of sequences, heads, SMs), so a call can be captured in a CUDA graph.
Measurements behind the heuristic's constants: benchmarks/NOTES.md.
"""
from __future__ import annotations

import dataclasses
import math

from gdnc.emit.config import (FORWARD_WIDTHS, LOCAL_STATE_GRADIENT, MAX_WINDOW_CHUNKS, BackwardConfig, ForwardConfig,
                              PrepareConfig)
from gdnc.ir.program import CHUNK_SIZE


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The knobs of the heuristic's split (HeuristicPolicy.split).

    segment_len: tokens per segment (a multiple of the chunk); 0 = never split, None = heuristic.
    min_segment_chunks: shorter segments cost more in warm-ups, chaining and launches than they save.
    min_tokens: calls with fewer tokens are not split.
    max_sequences: calls with up to this many sequences are split as if one sequence held all the
         tokens (one of them may), into the segment count that minimises the modelled time below;
         calls with more only where the unsplit call leaves half the GPU idle (a batch is taken to
         be balanced) and the sequences are long. Every sequence gets slots for all the tokens (the
         lengths are not read), so the slots, mostly empty, grow with the square of the sequence count.
    min_batch_sequence_tokens: such a batch is split only if it has this many tokens per sequence
         (shorter ones lose more to the split's fixed cost and empty slots than they gain).
    tau: log-space decay threshold of the gate-driven shortcut (gdnc.runtime.cp): a segment's start
         state is warmed up over the fewest whole chunks before it whose decay is at most tau in
         every head, used only where the transitions are provably non-expansive.
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

    def check(self) -> None:
        if self.segment_len is not None and (self.segment_len < 0 or self.segment_len % CHUNK_SIZE):
            raise ValueError(f"SplitConfig.segment_len must be 0, None or a positive multiple of the chunk "
                             f"({CHUNK_SIZE}), got {self.segment_len}")
        if self.min_segment_chunks < 1 or self.max_warmup_chunks < 1:
            raise ValueError(f"SplitConfig.min_segment_chunks and max_warmup_chunks must be >= 1, got "
                             f"{self.min_segment_chunks}, {self.max_warmup_chunks}")
        if self.min_tokens < 0 or self.min_batch_sequence_tokens < 0 or self.max_sequences < 1:
            raise ValueError(f"SplitConfig.min_tokens and min_batch_sequence_tokens must be >= 0 and max_sequences "
                             f">= 1, got {self.min_tokens}, {self.min_batch_sequence_tokens}, {self.max_sequences}")
        if self.max_warmup_chunks > MAX_WINDOW_CHUNKS:
            raise ValueError(f"SplitConfig.max_warmup_chunks must be at most {MAX_WINDOW_CHUNKS} (the planner "
                             f"kernel's window mask), got {self.max_warmup_chunks}")
        if not self.wave_overhead_chunks >= 0:
            raise ValueError(f"SplitConfig.wave_overhead_chunks must be >= 0, got {self.wave_overhead_chunks}")
        if not self.tau < 0:
            raise ValueError(f"SplitConfig.tau must be negative (a log-space decay), got {self.tau}")


@dataclasses.dataclass(frozen=True)
class Split:
    """A call cut into segments: every sequence gets ``slots`` slots of ``segment_len`` tokens
    (ceil(tokens / segment_len): enough for one sequence holding every token; slots past a
    sequence's end are empty ranges whose CTAs exit at once), each started from a warm-up of at
    most ``max_warmup_chunks`` chunks whose decay reaches ``tau``, or chained exactly."""

    segment_len: int
    slots: int
    tau: float = SplitConfig.tau
    max_warmup_chunks: int = SplitConfig.max_warmup_chunks

    def __post_init__(self):
        if self.segment_len < 1 or self.segment_len % CHUNK_SIZE or self.slots < 1:
            raise ValueError(f"Split needs segment_len a positive multiple of {CHUNK_SIZE} and slots >= 1, got "
                             f"{self.segment_len}, {self.slots}")
        if not 1 <= self.max_warmup_chunks <= MAX_WINDOW_CHUNKS or not self.tau < 0:
            raise ValueError(f"Split needs max_warmup_chunks in 1..{MAX_WINDOW_CHUNKS} and tau < 0, got "
                             f"{self.max_warmup_chunks}, {self.tau}")

    def window_limits(self) -> tuple[int, float]:
        """(W, τ in log2): the most chunks a warm-up window may have, and the decay threshold in the
        base of gdn_prepare's l2_gate. The planner kernel and its torch reference take both from here."""
        return min(self.segment_len // CHUNK_SIZE, self.max_warmup_chunks), self.tau * math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The configs of one call's kernels, and its split (None: every sequence in one range).
    states, backward and backward_split: what a call's backward runs (gdnc.runtime.backward): the
    states pass (a gdn_forward build with store_states), gdn_backward, and the backward's own split
    (gdnc.runtime.cp_backward; one CTA a value head, so it splits otherwise than the forward)."""

    forward: ForwardConfig
    prepare: PrepareConfig
    split: Split | None = None
    states: ForwardConfig = ForwardConfig(store_states=True)
    backward: BackwardConfig = BackwardConfig()
    backward_split: Split | None = None

    def __post_init__(self):
        if not self.states.store_states:
            raise ValueError(f"Plan.states must be a gdn_forward config with store_states=True, got {self.states}")

    def kernels(self) -> dict:
        """{kernel name: config} of every kernel the call's forward launches (config None: none to choose)."""
        kernels = {"gdn_prepare": self.prepare, "gdn_forward": self.forward}
        if self.split is not None:
            kernels.update(cp_plan=None, cp_chain=None)
        return kernels

    def backward_kernels(self) -> dict:
        """{role: (kernel name, config)} of the kernels the call's backward launches."""
        kernels = {"states": ("gdn_forward", self.states), "backward": ("gdn_backward", self.backward)}
        if self.backward_split is not None:
            kernels.update(forward=("gdn_forward", self.forward), plan=("cp_plan", None), chain=("cp_chain", None),
                           state_gradient=("gdn_backward", LOCAL_STATE_GRADIENT))
        return kernels


@dataclasses.dataclass(frozen=True)
class Layout:
    """The heuristic's layout of a call: V columns a CTA, and the split (segment_len 0: none)."""

    block_v: int
    segment_len: int = 0
    slots: int = 1


def layout_forward(tokens: int, num_sequences: int, h_v: int, sm_count: int, v_dim: int = 128,
                   widths: tuple[int, ...] | None = None, config: SplitConfig = SplitConfig()) -> Layout:
    """The layout of a call with ``tokens`` packed tokens in ``num_sequences`` sequences, at one of
    the V blocks ``widths`` (None: every forward block that divides ``v_dim``).

    The lengths of the sequences are not used (reading cu_seqlens would sync the host), so the
    layout holds for any lengths: slots are sized for one sequence holding every token. Split at
    the widest block, for calls of at least min_tokens tokens: with at most max_sequences
    sequences (one long sequence, or a long and a short one) into segment_count's segments; with
    more, of min_batch_sequence_tokens on average, when one wave holds two segments' CTAs of each,
    into as many as it holds; never shorter than min_segment_chunks. Unsplit: the narrowest block
    whose CTAs fit one wave (a CTA's chain is shorter the fewer columns it carries, and a second
    wave costs a whole serial pass), else the widest (the least repeated C×C work)."""
    config.check()
    widths = sorted(forward_widths(v_dim) if widths is None else widths)
    wide = widths[-1]
    per_sequence = h_v * (v_dim // wide)
    if config.segment_len:
        return Layout(wide, config.segment_len, math.ceil(tokens / config.segment_len))
    if num_sequences <= config.max_sequences:
        segments = segment_count(math.ceil(tokens / CHUNK_SIZE), per_sequence, sm_count, config)
    else:  # a balanced batch of long sequences: split only if each gets two segments or more
        each = sm_count // (num_sequences * per_sequence)
        long = tokens >= num_sequences * config.min_batch_sequence_tokens
        segments = each * num_sequences if each >= 2 and long else 0
    if config.segment_len is None and segments >= 2 and tokens >= config.min_tokens:
        segment_len = max(config.min_segment_chunks, math.ceil(tokens / segments / CHUNK_SIZE)) * CHUNK_SIZE
        if segment_len < tokens:
            return Layout(wide, segment_len, math.ceil(tokens / segment_len))
    for width in widths:
        if num_sequences * h_v * (v_dim // width) <= sm_count:
            return Layout(width)
    return Layout(wide)


def segment_count(chunks: int, per_segment: int, sm_count: int, config: SplitConfig) -> int:
    """How many segments to cut ``chunks`` chunks of one sequence into, ``per_segment`` CTAs each at one
    CTA an SM: the count n of at least min_segment_chunks chunks a segment that minimises the
    modelled time ceil(n · per_segment / sm_count) · (ceil(chunks / n) + wave_overhead_chunks) (the
    fewest on a tie); 1 where no split is modelled faster than none."""
    def cost(n):
        return math.ceil(n * per_segment / sm_count) * (math.ceil(chunks / n) + config.wave_overhead_chunks)

    most = max(1, chunks // config.min_segment_chunks)
    return min(range(1, most + 1), key=lambda n: (cost(n), n))


def prepare_heads_per_cta(tokens: int, num_sequences: int, h_qk: int, group: int, resident_ctas: int) -> int:
    """gdn_prepare's value heads a CTA: all ``group`` value heads of a k head, which then share one
    load of k and one K Kᵀ, where its CTAs (one per chunk slot and k head) still fill the GPU
    ``resident_ctas`` at a time; else one (h_v CTAs a slot, so more run side by side, each
    shorter: the shared CTAs lose where a call is short)."""
    slots = tokens // CHUNK_SIZE + num_sequences
    return group if slots * h_qk >= resident_ctas else 1


def forward_widths(v_dim: int) -> tuple[int, ...]:
    """The forward's V blocks that divide ``v_dim``; ValueError where none does."""
    widths = tuple(w for w in FORWARD_WIDTHS if v_dim % w == 0)
    if not widths:
        raise ValueError(f"no forward V block {FORWARD_WIDTHS} divides V={v_dim}")
    return widths
