"""Time gdnc's forward over a few plans per shape (a tuning probe, not the peer benchmark): the
default policy's plan (gdnc.runtime.policy), unsplit at every V block, and split at several segment
lengths at the two widest.

    python benchmarks/sweep_forward.py --compile-only   # fill the kernel cache (CPU is enough)
    python benchmarks/sweep_forward.py [--out F]        # on the GPU: CUDA-graph time and error per plan
"""
import argparse
import dataclasses
import sys

from script_io import write_out

from gdnc.check import op_jobs
from gdnc.emit.cache import build_many
from gdnc.emit.config import FORWARD_WIDTHS, Heads
from gdnc.runtime.plan import SplitConfig
from gdnc.runtime.policy import DEFAULT_POLICY, HeuristicPolicy

# h_qk, h_v, sequence lengths
SHAPES = [(2, 8, (2048,)), (2, 8, (4096,)), (2, 8, (8192,)), (2, 8, (32768,)), (2, 8, (28672, 4096)),
          (2, 8, (8192,) * 4), (4, 16, (32768,)), (8, 32, (8192,)), (8, 32, (32768,)), (16, 32, (32768,)),
          (16, 32, (28672, 4096)), (16, 32, (8192,) * 4), (16, 16, (32768,)), (16, 64, (32768,)),
          (16, 64, (4096,) * 8)]
SEGMENT_LENS = (256, 512, 1024, 2048, 4096, 8192)
MAX_SEGMENTS = 64


def policies(tokens: int):
    """The policies swept besides the default: unsplit at every width, split at the two widest."""
    yield from (HeuristicPolicy(SplitConfig(segment_len=0), {"block_v": bv}) for bv in FORWARD_WIDTHS)
    yield from (HeuristicPolicy(SplitConfig(segment_len=n), {"block_v": bv}) for bv in FORWARD_WIDTHS[-2:]
                for n in SEGMENT_LENS if n < tokens and tokens <= MAX_SEGMENTS * n)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    heads = sorted({(h, hv) for h, hv, _ in SHAPES})
    build_many([job for hq, hv in heads for job in op_jobs("gdn", Heads(hq, hv))], args.workers)
    if args.compile_only:
        return 0

    import torch

    from gdnc.bench.shapes import Shape, make_inputs
    from gdnc.bench.timing import time_calls
    from gdnc.reference.compare import relative_error
    from gdnc.runtime.ops import kernel_call

    rows = []
    generator = torch.Generator("cuda").manual_seed(0)
    for hq, hv, lengths in SHAPES:
        shape = Shape(hq, hv, lengths)
        inputs = make_inputs(shape, generator)
        q, k, v, g, beta, h0, cu = (inputs[name] for name in ("q", "k", "v", "g", "beta", "initial_state",
                                                                 "cu_seqlens"))
        ref, default, seen = None, None, set()
        label = f"{hq}/{hv} {'+'.join(map(str, lengths))}"
        for policy in [DEFAULT_POLICY, *policies(sum(lengths))]:
            plan, fn = kernel_call(q, k, v, g, beta, h0, True, cu, policy=policy)
            if plan in seen:
                continue
            seen.add(plan)
            default = default or plan
            o, ht = fn()
            ref = (o, ht) if ref is None else ref
            timing = time_calls([fn])
            rows.append({"shape": label, "plan": dataclasses.asdict(plan), "default": plan == default, "ms": timing.ms,
                         "repeats_ms": timing.repeats_ms, "method": timing.method,
                         "o_vs_default": relative_error(o, ref[0]), "state_vs_default": relative_error(ht, ref[1])})
            segment = plan.split.segment_len if plan.split else 0
            print(f"{label:22s} bv={plan.forward.block_v} segment={segment:5d}{' (default)' if plan == default else ''}: "
                  f"{timing.ms:.3f} ms [{timing.method}] (vs default o {rows[-1]['o_vs_default']:.1e}, "
                  f"state {rows[-1]['state_vs_default']:.1e})", flush=True)
    write_out(args.out, {"device": torch.cuda.get_device_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
