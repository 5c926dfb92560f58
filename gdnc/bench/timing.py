"""GPU timing: CUDA-graph replays, medians, two repeats; and the GPU's two ceilings.

A timed region is a list of calls, one per input set. Small shapes rotate over several input
sets so that repeated runs do not read their inputs from L2; the graph holds every call once and
a replay's time is divided by the number of calls.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Per-call times in ms: the median of each repeat, and how they were taken."""

    repeats_ms: tuple[float, ...]
    method: str  # "cuda_graph", or "events" when the calls could not be captured
    calls_per_replay: int
    replays: int
    note: str = ""

    @property
    def ms(self) -> float:
        return statistics.median(self.repeats_ms)

    @property
    def spread(self) -> float:
        """(slowest - fastest) / fastest repeat: noise to read every difference against."""
        return (max(self.repeats_ms) - min(self.repeats_ms)) / min(self.repeats_ms)

    def as_dict(self) -> dict:
        return {**asdict(self), "ms": self.ms, "spread": self.spread}


def _capture(calls: Sequence[Callable[[], object]]):
    """A CUDA graph that runs every call once; raises if some call cannot be captured
    (a host sync, a launch on another stream)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return graph


def _sample_ms(step: Callable[[], object], count: int) -> list[float]:
    """Event-timed durations of `count` back-to-back steps, in ms."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    for start, end in zip(starts, ends):
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends)]


def time_calls(calls: Sequence[Callable[[], object]], *, warmup: int = 3, repeats: int = 2,
               target_ms: float = 150.0, max_replays: int = 200) -> Timing:
    """Median time of one call, over `repeats` independent batches of graph replays.

    Warm-up runs every call first, so compilation, autotuning and per-call plan caches (which
    sync the host) stay out of the graph and out of the numbers.
    """
    if not calls:
        raise ValueError("time_calls needs at least one call")
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1, got {repeats}, {warmup}")
    for _ in range(warmup):
        for call in calls:
            call()
    torch.cuda.synchronize()

    note = ""
    try:
        graph = _capture(calls)
        step, method = graph.replay, "cuda_graph"
    except Exception as error:  # any capture failure: fall back to timing launches with events
        torch.cuda.synchronize()
        message = (str(error).strip().splitlines() or [""])[0][:200]
        note = f"graph capture failed: {type(error).__name__}: {message}"

        def step():
            for call in calls:
                call()

        method = "events"

    step()
    probe = statistics.median(_sample_ms(step, 3))
    replays = max(5, min(max_replays, int(target_ms / max(probe, 1e-3))))
    repeats_ms = tuple(statistics.median(_sample_ms(step, replays)) / len(calls)
                       for _ in range(repeats))
    return Timing(repeats_ms, method, len(calls), replays, note)


# The ceilings take the fastest repeat, not the median: a floor must stay a lower bound, and the
# GEMM slows by up to 15% between repeats as the card heats (seen on the H100, 2026-11-23).


def measure_copy_bandwidth(nbytes: int = 1 << 30) -> dict:
    """Device-to-device copy of `nbytes`; bandwidth counts bytes read plus bytes written."""
    src = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    timing = time_calls([lambda: dst.copy_(src)])
    moved = 2 * src.numel() * src.element_size()
    return {"bytes_per_s": moved / (min(timing.repeats_ms) * 1e-3), "bytes": moved,
            **timing.as_dict()}


def measure_gemm_rate(n: int = 8192) -> dict:
    """bf16 n x n x n matrix product through torch (cuBLAS), fp32 accumulation."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    timing = time_calls([lambda: torch.mm(a, b, out=c)])
    flops = 2.0 * n ** 3
    return {"flops_per_s": flops / (min(timing.repeats_ms) * 1e-3), "n": n, **timing.as_dict()}
