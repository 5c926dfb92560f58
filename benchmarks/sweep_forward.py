"""Time gdnc's forward kernels over a few configs (a tuning probe, not the peer benchmark).

    python benchmarks/sweep_forward.py --compile-only   # fill the kernel cache (CPU is enough)
    python benchmarks/sweep_forward.py                  # on the GPU: error and CUDA-graph time per config
"""
import argparse
import json
import sys

import gdnc
from gdnc.emit.build import compile_many
from gdnc.emit.config import ForwardConfig, Heads
from gdnc.ops import sources_for

CONFIGS = [ForwardConfig(block_v=64), ForwardConfig(block_v=32)]
SHAPES = [(16, 32, 1, 8192), (16, 32, 4, 8192), (2, 8, 1, 8192), (16, 64, 8, 4096)]  # h_qk, h_v, sequences, tokens each


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    heads = sorted({(h, hv) for h, hv, _, _ in SHAPES})
    sources = {(hq, hv, cfg, name): src for hq, hv in heads for cfg in CONFIGS
               for name, src in sources_for(Heads(hq, hv), cfg).items()}
    compile_many(sources, args.workers, gdnc.get_variant("gdn").ir_hash)
    if args.compile_only:
        return 0

    import torch

    from gdnc.bench.shapes import Shape, make_inputs
    from gdnc.bench.timing import time_calls
    from gdnc.ops import kernels, output_allocator, prepare_args, run_kernels
    from gdnc.reference.compare import relative_error
    from gdnc.reference.problem import check_arguments

    rows = []
    generator = torch.Generator("cuda").manual_seed(0)
    for hq, hv, n, t in SHAPES:
        cu = torch.arange(n + 1, device="cuda", dtype=torch.int32) * t
        inputs = make_inputs(Shape(hq, hv, (t,) * n), generator, cu_seqlens=cu)
        q, k, v, g, beta = (inputs[name] for name in ("q", "k", "v", "g", "beta"))
        s = check_arguments(gdnc.get_variant("gdn"), q, k, v, scale=None, initial_state=None, cu_seqlens=cu,
                            inputs={"g": g, "beta": beta})
        ref, _ = gdnc.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu)
        # the prepare kernel alone (the same for every forward config)
        prepare = kernels(Heads(hq, hv))["gdn_prepare"]
        prep = prepare_args(k, g, beta, s, cu, output_allocator("cuda", poison=False))
        prep_ms = time_calls([lambda: prepare(*prep)]).ms
        rows.append({"shape": f"{hq}/{hv} {n}x{t}", "config": "gdn_prepare alone", "ms": prep_ms})
        print(f"{hq}/{hv} {n}x{t} gdn_prepare alone: {prep_ms:.3f} ms", flush=True)
        for cfg in CONFIGS:
            fn = lambda: run_kernels(q, k, v, g, beta, s, None, False, cu, forward=cfg)  # noqa: E731
            o, _ = fn()
            timing = time_calls([fn])
            ms = timing.ms
            rows.append({"shape": f"{hq}/{hv} {n}x{t}", "config": cfg.__dict__, "ms": ms,
                         "repeats_ms": timing.repeats_ms, "method": timing.method,
                         "diff_vs_default": relative_error(o, ref)})
            print(f"{hq}/{hv} {n}x{t} bv={cfg.block_v} regs={cfg.registers}: {ms:.3f} ms "
                  f"(vs default {rows[-1]['diff_vs_default']:.1e})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
